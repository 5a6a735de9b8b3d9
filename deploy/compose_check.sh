#!/usr/bin/env bash
# docker-compose.yml end to end, as the README's "Run it with Docker Compose" tells a user, on a host with no GPU
# (the CPU worker). Run from the repository root; it checks the committed tree (git archive HEAD), in a temporary
# folder, under its own project name, and removes its containers and volumes at the end.
#
#   deploy/compose_check.sh                                          # images from Docker Hub and PyTorch's index
#   deploy/compose_check.sh --torch-index http://127.0.0.1:8765/simple   # a local index (deploy/offline_images.sh)
#   deploy/compose_check.sh --cuda-index https://pypi.org/simple         # also the GPU worker's image (CUDA torch)
#
# With --cuda-index it also builds the GPU worker's image from that index (PyPI's Linux torch is a CUDA build),
# checks its torch is a CUDA build, tries `up -d worker` (on a host with no GPU it fails to get one) and runs that
# image as a worker without the GPU reservation. It prints one line per check and exits non-zero at the first that
# fails.
set -euo pipefail
torch_index=
cuda_index=
while [ $# -gt 0 ]; do
  case $1 in
    --torch-index) torch_index=${2:?--torch-index URL}; shift 2 ;;
    --cuda-index) cuda_index=${2:?--cuda-index URL}; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
repo=$(pwd)
work=$(mktemp -d)
project=lrbscheck
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
dc() { (cd "$work" && "${compose[@]}" -p "$project" "$@"); }
cleanup() {
  docker rm -f "${project}_gpu_image_worker" >/dev/null 2>&1 || true
  dc --profile cpu down -v >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
ok() { printf '| %s | %s |\n' "$1" "$2"; }
fail() { printf '| %s | FAILED: %s |\n' "$1" "$2"; exit 1; }
image_of() { docker image inspect "${project}_$1" >/dev/null 2>&1 && echo "${project}_$1" || echo "${project}-$1"; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f} s')" "$@"; }

git -C "$repo" archive HEAD | tar -x -C "$work"
cp "$work/.env.example" "$work/.env"
token=$(python3 -c "import secrets; print(secrets.token_urlsafe(32))")
password=$(python3 -c "import secrets; print(secrets.token_hex(12))")
sed -i "s/^LRBS_WORKER_TOKEN=.*/LRBS_WORKER_TOKEN=$token/; s/^POSTGRES_PASSWORD=.*/POSTGRES_PASSWORD=$password/" "$work/.env"
{
  echo "services:"
  if [ -n "$torch_index" ]; then
    for s in migrate service worker-cpu; do
      echo "  $s: {build: {context: ., network: host, args: {TORCH_INDEX_URL: \"$torch_index\"}}}"
    done
  fi
  [ -z "$cuda_index" ] || echo "  worker: {build: {context: ., network: host, args: {TORCH_INDEX_URL: \"$cuda_index\"}}}"
} > "$work/docker-compose.override.yml"
[ -n "$torch_index$cuda_index" ] || rm "$work/docker-compose.override.yml"
echo "compose: $("${compose[@]}" version | head -1); docker: $(docker version -f '{{.Server.Version}}'); lrbs at $(git -C "$repo" rev-parse --short HEAD)"
echo
echo "| check | result |"
echo "|---|---|"

t0=$(date +%s.%N)
dc build migrate service worker-cpu >"$work/build.log" 2>&1 || { tail -20 "$work/build.log"; fail "build" "see above"; }
ok "images build (migrate, service, worker-cpu)" "$(secs "$t0" "$(date +%s.%N)"), $(docker image inspect -f '{{.Size}}' "$(image_of service)" | awk '{printf "%.2f GB", $1/1e9}')"
user=$(docker run --rm --entrypoint id "$(image_of service)" -u)
[ "$user" != 0 ] && ok "the image runs as a non-root user" "uid $user" || fail "non-root user" "uid 0"

dc run --rm migrate >"$work/migrate.log" 2>&1 || { tail -20 "$work/migrate.log"; fail "migrate" "see above"; }
ok "\`run --rm migrate\` (starts postgres, waits for its health check)" "$(tail -1 "$work/migrate.log")"
key=$(dc run --rm migrate lrbs keys create --name platform --admin 2>/dev/null | tail -1 | tr -d '\r')
[ -n "$key" ] && ok "\`run --rm migrate lrbs keys create --name platform --admin\`" "a key printed" || fail "keys create" "no key"

worker_image() { docker image inspect -f '{{.Id}}' "$(image_of worker)" 2>/dev/null || echo none; }
before=$(worker_image)
t0=$(date +%s.%N)
dc --profile cpu up -d service worker-cpu >"$work/up.log" 2>&1 || { tail -20 "$work/up.log"; fail "up" "see above"; }
ok "\`--profile cpu up -d service worker-cpu\` (returns once service is healthy)" "$(secs "$t0" "$(date +%s.%N)")"
[ "$(worker_image)" = "$before" ] || fail "the GPU worker's image" "built although only service and worker-cpu were asked for"
ok "\`up\` does not build the GPU worker's image (CUDA torch) on this host" "not built"

api() { curl -s -H "authorization: Bearer $key" "$@"; }
state() { api "http://127.0.0.1:8000$1" | python3 -c "import sys, json; j = json.load(sys.stdin); e = j.get('error') or {}; print(j['state'], e.get('kind', ''))"; }
wait_for() {  # job, states (regex), seconds
  for _ in $(seq 1 $(($3 * 2))); do s=$(state "$1"); [[ $s =~ ^($2) ]] && { echo "$s"; return; }; sleep 0.5; done
  echo "timeout: $s"
}
submit() { api -i http://127.0.0.1:8000/v1/jobs -H 'content-type: application/json' -d "$1" | awk 'tolower($1) == "location:" {print $2}' | tr -d '\r'; }

code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8000/healthz)
[ "$code" = 200 ] && ok "GET /healthz from the host" "$code" || fail "healthz" "$code"
code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8000/v1/jobs)
[ "$code" = 401 ] && ok "GET /v1/jobs without a key" "$code" || fail "no key" "$code"

t0=$(date +%s.%N)
job=$(submit '{"model": {"name": "mlp", "params": {"hidden": [64, 64]}},
  "dataset": {"name": "synthetic_classification", "params": {"n_samples": 2048}},
  "optimizer": {"name": "sgd", "params": {"momentum": 0.9}}, "batch_sizes": [32, 64, 128]}')
s=$(wait_for "$job" "succeeded|failed" 180)
[[ $s == succeeded* ]] && ok "the README's job (with batch_sizes) on the CPU worker" "succeeded in $(secs "$t0" "$(date +%s.%N)")" || fail "README job" "$s"
code=$(api -o /dev/null -w '%{http_code}' "http://127.0.0.1:8000$job/plots/lr_range.svg")
[ "$code" = 200 ] && ok "its plot, GET $job/plots/lr_range.svg" "$code" || fail "plot" "$code"
online=$(api http://127.0.0.1:8000/metrics | awk '$1 == "lrbs_workers_online{device_kind=\"cpu\"}" {print $2}')
[ "$online" = 1.0 ] && ok "/metrics: lrbs_workers_online{device_kind=\"cpu\"}" "$online" || fail "metrics" "$online"

python3 -c "
import numpy as np
rng = np.random.default_rng(0); x = rng.standard_normal((4096, 16)).astype('float32')
np.savez('$work/train.npz', x=x, y=(x[:, 0] > 0).astype('int64'))"
dataset=$(api http://127.0.0.1:8000/v1/datasets -F "file=@$work/train.npz" | python3 -c "import sys, json; print(json.load(sys.stdin)['id'])")
ok "an upload (into the named volume lrbs-data, written by the non-root user)" "dataset $dataset"
job=$(submit "{\"model\": {\"name\": \"mlp\", \"params\": {\"hidden\": [256, 256]}},
  \"dataset\": {\"source\": \"upload\", \"id\": \"$dataset\"}, \"optimizer\": {\"name\": \"adam\"},
  \"lr_range\": {\"num_steps\": 400, \"thoroughness\": \"thorough\"}, \"batch_sizes\": [32, 64, 128, 256]}")
s=$(wait_for "$job" "running" 60)
sleep 2
t0=$(date +%s.%N)
dc stop worker-cpu >/dev/null 2>&1
stopped=$(secs "$t0" "$(date +%s.%N)")
exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$(dc ps -a -q worker-cpu)")
s=$(state "$job")
[[ $s == "queued shutdown" && $exit_code == 0 ]] \
  && ok "\`stop worker-cpu\` during a job on the upload: the worker hands it back" "stopped in $stopped, exit $exit_code; job: $s" \
  || fail "stop worker mid-job" "exit $exit_code, job $s"
dc start worker-cpu >/dev/null 2>&1
s=$(wait_for "$job" "succeeded|failed" 300)
[[ $s == succeeded* ]] && ok "\`start worker-cpu\`: the handed-back job runs again" "$s" || fail "job after restart" "$s"

if [ -n "$cuda_index" ]; then
  t0=$(date +%s.%N)
  dc build worker >"$work/build-cuda.log" 2>&1 || { tail -20 "$work/build-cuda.log"; fail "the GPU worker's image" "see above"; }
  image=$(image_of worker)
  cuda=$(docker run --rm --entrypoint python "$image" -c "import torch; print(torch.__version__, torch.version.cuda)")
  [[ $cuda != *None ]] && ok "the GPU worker's image builds from $cuda_index" "$(secs "$t0" "$(date +%s.%N)"), $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.2f GB", $1/1e9}'), torch $cuda" || fail "CUDA torch" "$cuda"
  if up=$(dc up -d worker 2>&1); then
    ok "\`up -d worker\` (the GPU reservation)" "started"
  else
    ok "\`up -d worker\` (the GPU reservation)" "refused here: $(grep -o 'could not select device driver[^:]*' <<<"$up" | head -1)"
  fi
  dc stop worker-cpu >/dev/null 2>&1
  docker run -d --name "${project}_gpu_image_worker" --network "${project}_default" -e "LRBS_WORKER_TOKEN=$token" \
    "$image" lrbs worker --url http://service:8000 >/dev/null
  job=$(submit '{"model": {"name": "mlp"}, "dataset": {"name": "synthetic_classification"}, "optimizer": {"name": "adam"}}')
  s=$(wait_for "$job" "succeeded|failed" 180)
  devices=$(docker logs "${project}_gpu_image_worker" 2>&1 | grep -o "registered: devices [^,]*" | head -1)
  docker rm -f "${project}_gpu_image_worker" >/dev/null
  dc start worker-cpu >/dev/null 2>&1
  [[ $s == succeeded* ]] && ok "that image as a worker without the reservation" "$devices; a job $s" || fail "GPU image worker" "$s"
fi

t0=$(date +%s.%N)
dc stop service >/dev/null 2>&1
ok "\`stop service\` (SIGTERM)" "stopped in $(secs "$t0" "$(date +%s.%N)"), exit $(docker inspect -f '{{.State.ExitCode}}' "$(dc ps -a -q service)") (143: uvicorn re-raises SIGTERM after its clean shutdown)"
dc --profile cpu down >/dev/null 2>&1
dc --profile cpu up -d service worker-cpu >/dev/null 2>&1
jobs=$(api "http://127.0.0.1:8000/v1/jobs?view=summary" | python3 -c "import sys, json; print(len(json.load(sys.stdin)['jobs']))")
expected=$([ -n "$cuda_index" ] && echo 3 || echo 2)
[ "$jobs" = "$expected" ] && ok "\`down\`, then \`up\` again: the jobs are still there (named volume postgres-data)" "$jobs jobs" || fail "persistence" "$jobs jobs"

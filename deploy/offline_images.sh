#!/usr/bin/env bash
# Stand-ins for the images docker-compose.yml pulls, on a machine that reaches Debian's mirror and PyPI but not
# Docker Hub or PyTorch's wheel index (this project's machines). Not for production: it is how
# deploy/compose_check.sh gets to run here.
#
#   sudo deploy/offline_images.sh /path/to/torch-2.13.0+cpu-...whl     # then:
#   deploy/compose_check.sh --torch-index http://127.0.0.1:8765/simple
#
# * python:3.11-slim: Debian bookworm (debootstrap, minbase) with its Python 3.11 as `python`, and this host's CA
#   bundle and pip's `cert` setting (so TLS through this host's proxy verifies, as it does for the host's pip).
# * postgres:16: Debian's PostgreSQL 15 on that base, with an entry point that does what the official image's
#   first start does with POSTGRES_USER, POSTGRES_DB and POSTGRES_PASSWORD (deploy/offline/).
# * A PEP 503 index of the torch wheel given and its dependencies, served on 127.0.0.1:8765 (the Dockerfile's
#   TORCH_INDEX_URL is an --index-url: everything torch needs must be on it).
set -euo pipefail
wheel=${1:?usage: offline_images.sh TORCH_WHEEL}
here=$(cd "$(dirname "$0")" && pwd)
work=${OFFLINE_WORK:-/tmp/lrbs-offline}
mkdir -p "$work"

if ! docker image inspect python:3.11-slim >/dev/null 2>&1; then
  root="$work/rootfs"
  [ -x "$root/usr/bin/python3" ] || debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" http://deb.debian.org/debian
  ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
  tar -C "$root" -c . | docker import - python:3.11-slim
fi
docker build -q --network host -t postgres:16 -f "$here/offline/postgres.Dockerfile" "$here/offline"

index="$work/torch-index"
mkdir -p "$index/files"
cp "$wheel" "$index/files/"
python3 -m pip download -q --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
  --dest "$index/files" filelock 'typing-extensions>=4.10' 'setuptools>=77.0.3' 'sympy>=1.13.3' \
  'networkx>=2.5.1' jinja2 'fsspec>=0.8.5' mpmath markupsafe
python3 - "$index" <<'PY'
import collections, os, re, sys
index = sys.argv[1]
groups = collections.defaultdict(list)
for name in os.listdir(f"{index}/files"):
    groups[re.split(r"-\d", name, maxsplit=1)[0].lower().replace("_", "-")].append(name)
for project, files in groups.items():
    os.makedirs(f"{index}/simple/{project}", exist_ok=True)
    links = "".join(f'<a href="../../files/{f}">{f}</a><br>' for f in files)
    open(f"{index}/simple/{project}/index.html", "w").write(f"<html><body>{links}</body></html>")
PY
if ! curl -sf http://127.0.0.1:8765/simple/torch/ >/dev/null; then
  (cd "$index" && nohup python3 -m http.server 8765 --bind 127.0.0.1 >"$work/index.log" 2>&1 &)
  sleep 1
fi
echo "stand-in images ready; torch index at http://127.0.0.1:8765/simple"

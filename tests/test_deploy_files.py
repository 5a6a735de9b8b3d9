"""docker-compose.yml, Dockerfile, .dockerignore and .env.example, checked against the code they deploy.

They run on every machine, Docker or not (deploy/compose_check.sh runs the compose file for real), so they read
the files: every command the compose file or the image runs
is parsed by the real `lrbs` click commands (options, types and required values, with the environment that
container gets), every LRBS_* variable is a real service setting or a variable the worker reads, and the
services, health checks, volumes, GPU reservation and build arguments fit together.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from lrbs.cli import main as lrbs_command
from lrbs.service.settings import Settings
from lrbs.worker.__main__ import main as worker_command

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"

SERVICE_SETTINGS = {f"LRBS_{name.upper()}" for name in Settings.model_fields}
# The worker reads its environment only through click options of `lrbs worker` (lrbs/worker/__main__.py).
WORKER_VARIABLES = {
    name
    for param in worker_command.params
    if isinstance(param, click.Option) and param.envvar
    for name in ([param.envvar] if isinstance(param.envvar, str) else param.envvar)
}
WORKERS = ("worker", "worker-cpu")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


# ---- reading the files ----


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def env_example() -> tuple[dict[str, str], set[str]]:
    """The variables .env.example sets, and every name it documents (commented-out optional ones too)."""
    values, documented = {}, set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        if match := re.fullmatch(r"\s*(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", line):
            documented.add(match[2])
            if not match[1]:
                values[match[2]] = match[3].strip()
    return values, documented


INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error} and $$, filled from `variables`."""

    def fill(match: re.Match[str]) -> str:
        name, op, arg = match[1], match[2], match[3]
        value = variables.get(name)
        if op == ":-":
            return value or arg
        if op == "-":
            return arg if value is None else value
        if op in (":?", "?"):
            assert value, f"docker-compose.yml requires {name} ({arg}), and .env.example does not set it"
            return value
        return value or ""

    return INTERPOLATION.sub(fill, value.replace("$$", "\0")).replace("\0", "$")


def resolved(service: dict[str, Any], key: str) -> Any:
    """`service[key]` with every string interpolated from .env.example, as Compose would run it."""
    values = env_example()[0]

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return interpolate(node, values)
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        return node

    return walk(service.get(key))


def environment(name: str) -> dict[str, str]:
    env = resolved(services()[name], "environment") or {}
    assert isinstance(env, dict), f"{name}: write `environment` as a mapping (NAME: value)"
    return {key: "" if value is None else str(value) for key, value in env.items()}


def command(name: str) -> list[str]:
    argv = resolved(services()[name], "command")
    assert isinstance(argv, list), f"{name}: write `command` in exec form (a list), not {argv!r}"
    return argv


def referenced_variables(text: str) -> set[str]:
    return {match[1] for match in INTERPOLATION.finditer(text.replace("$$", ""))}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    joined, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1].strip()) for text in joined]


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in dockerfile_instructions():
        if instruction[0] == "FROM":
            stages.append([])
        assert stages, "the Dockerfile has an instruction before its first FROM (only ARG may come first)"
        stages[-1].append(instruction)
    return stages


def dockerfile_args(stage: list[tuple[str, str]]) -> dict[str, str | None]:
    args: dict[str, str | None] = {}
    for keyword, rest in stage:
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip() or None
    return args


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (or a folder above it) out of the build context."""
    ignored = False
    for line in DOCKERIGNORE.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
        parts = path.strip("/").split("/")
        if any(re.fullmatch(regex, "/".join(parts[: i + 1])) for i in range(len(parts))):
            ignored = not negate
    return ignored


def parse_lrbs(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch, where: str) -> click.Context:
    """Parse `argv` with the real `lrbs` command in `env` (and no other LRBS_* variable): the subcommand, options,
    their types and required values are checked; nothing runs. (`--help` passes, as click answers it.)"""
    assert argv and argv[0] == "lrbs", f"{where}: runs {argv!r}, not an `lrbs` command"
    cmd: click.Command = lrbs_command
    name, args = "lrbs", list(argv[1:])
    while isinstance(cmd, click.Group) and args and not args[0].startswith("-"):
        ctx = click.Context(cmd, info_name=name)
        sub = cmd.get_command(ctx, args[0])
        assert sub is not None, (
            f"{where}: `{name} {args[0]}` is not a command; `{name}` has {sorted(cmd.list_commands(ctx))}"
        )
        cmd, name, args = sub, f"{name} {args[0]}", args[1:]
    with monkeypatch.context() as m:
        for key in [key for key in os.environ if key.startswith("LRBS_")]:
            m.delenv(key)
        for key, value in env.items():
            m.setenv(key, value)
        try:
            ctx = cmd.make_context(name, args)
        except click.exceptions.Exit as exc:  # --help or --version: printed, and a success
            assert exc.exit_code == 0, f"{where}: `{' '.join(argv)}` exits with {exc.exit_code}"
            return click.Context(cmd, info_name=name)
        except click.UsageError as exc:
            pytest.fail(f"{where}: `{' '.join(argv)}` is refused by `{name}`: {exc.format_message()}")
    assert not isinstance(cmd, click.Group), f"{where}: `{' '.join(argv)}` names no subcommand of `{name}`"
    return ctx


def lrbs_services() -> list[str]:
    return [name for name, service in services().items() if str(service.get("image", "")).split(":")[0] != "postgres"]


# ---- docker-compose.yml ----


def test_compose_has_the_five_services():
    missing = {"postgres", "migrate", "service", "worker", "worker-cpu"} - services().keys()
    assert not missing, f"docker-compose.yml lacks the services {sorted(missing)}"


def test_postgres_is_healthchecked_and_keeps_its_data_in_a_named_volume():
    postgres = services()["postgres"]
    assert str(postgres.get("image", "")).startswith("postgres:16"), "postgres should run the official postgres:16"
    test = " ".join(postgres.get("healthcheck", {}).get("test", []))
    assert "pg_isready" in test, f"postgres's health check should run pg_isready, not {test!r}"
    named = compose().get("volumes") or {}
    mounts = {volume.split(":")[0]: volume.split(":")[1] for volume in postgres.get("volumes", [])}
    data = [source for source, target in mounts.items() if target == "/var/lib/postgresql/data"]
    assert data and data[0] in named, (
        f"postgres's /var/lib/postgresql/data should be a named volume declared under the top-level `volumes` "
        f"(declared: {sorted(named)}; mounts: {mounts})"
    )
    env = environment("postgres")
    for key in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        assert env.get(key), f"postgres's environment should set {key}"


def test_the_service_reaches_postgres_with_psycopg_and_the_postgres_credentials():
    pg = environment("postgres")
    for name in ("migrate", "service"):
        url = make_url(environment(name).get("LRBS_DATABASE_URL", ""))
        assert url.drivername == "postgresql+psycopg", f"{name}: LRBS_DATABASE_URL should be postgresql+psycopg://…"
        assert url.host == "postgres" and (url.port or 5432) == 5432, f"{name}: the database host is postgres:5432"
        assert (url.username, url.password, url.database) == (
            pg["POSTGRES_USER"],
            pg["POSTGRES_PASSWORD"],
            pg["POSTGRES_DB"],
        ), f"{name}: LRBS_DATABASE_URL's user, password and database should be postgres's own"


def test_migrate_runs_db_upgrade_once_after_postgres_is_healthy():
    migrate = services()["migrate"]
    assert command("migrate") == ["lrbs", "db", "upgrade"], (
        f"migrate should run `lrbs db upgrade`, not {command('migrate')}"
    )
    assert migrate.get("restart") == "no", 'migrate runs once: `restart: "no"` (quoted: bare no is YAML false)'
    assert migrate.get("depends_on", {}).get("postgres", {}).get("condition") == "service_healthy", (
        "migrate should wait for postgres with condition service_healthy"
    )


def test_the_service_waits_for_postgres_and_the_migration_and_does_not_migrate_itself(monkeypatch):
    depends = services()["service"].get("depends_on", {})
    assert depends.get("postgres", {}).get("condition") == "service_healthy", "service: postgres service_healthy"
    assert depends.get("migrate", {}).get("condition") == "service_completed_successfully", (
        "service should wait for migrate with condition service_completed_successfully"
    )
    with monkeypatch.context() as m:
        for key in [key for key in os.environ if key.startswith("LRBS_")]:
            m.delenv(key)
        for key, value in environment("service").items():
            m.setenv(key, value)
        try:
            settings = Settings()
        except ValidationError as exc:
            pytest.fail(f"service: its environment is not valid lrbs settings: {exc}")
    assert settings.auto_migrate is False, "service: LRBS_AUTO_MIGRATE should be false (migrate does it)"


def test_the_service_healthcheck_asks_readyz_on_its_own_port_with_python(monkeypatch):
    service = services()["service"]
    serve = parse_lrbs(command("service"), environment("service"), monkeypatch, "service")
    assert serve.info_name == "lrbs serve" and serve.params["n_workers"] == 0, "service: `lrbs serve --workers 0`"
    assert serve.params["host"] == "0.0.0.0", "service: serve on 0.0.0.0, or no other container can reach it"
    port = serve.params["port"]
    published = [str(p).rsplit(":", 1)[-1] for p in service.get("ports", [])]
    assert str(port) in published, f"service: publish the port it serves on ({port}); ports are {published}"
    test = service.get("healthcheck", {}).get("test", [])
    assert test[:3] == ["CMD", "python", "-c"], f"service: the health check should be python -c …, not {test}"
    code = test[3]
    compile(code, "healthcheck", "exec")  # it is valid Python
    assert "urllib.request" in code and f"127.0.0.1:{port}/readyz" in code, (
        f"service: the health check should open http://127.0.0.1:{port}/readyz with urllib, not {code!r}"
    )


def test_the_data_dir_is_a_named_volume_of_the_service_and_no_worker_needs_it():
    named = compose().get("volumes") or {}
    data_dir = environment("service").get("LRBS_DATA_DIR")
    assert data_dir, "service: set LRBS_DATA_DIR (the uploads' folder) on a named volume"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services()["service"].get("volumes", [])}
    assert mounts.get(data_dir) in named, (
        f"service: LRBS_DATA_DIR={data_dir} should be the target of a named volume (mounts: {mounts})"
    )
    # Workers download uploads from the service (GET /v1/worker/datasets/{id}) and never read LRBS_DATA_DIR,
    # so the volume stays with the service: workers may run on hosts that cannot mount it.
    for name in WORKERS:
        assert "LRBS_DATA_DIR" not in environment(name), f"{name}: workers do not read LRBS_DATA_DIR"


def test_every_command_is_a_real_lrbs_command_with_real_options(monkeypatch):
    for name in lrbs_services():
        parse_lrbs(command(name), environment(name), monkeypatch, name)


def test_workers_pull_from_the_service_with_the_worker_token(monkeypatch):
    serve = parse_lrbs(command("service"), environment("service"), monkeypatch, "service")
    token = environment("service").get("LRBS_WORKER_TOKEN")
    assert token, "service: set LRBS_WORKER_TOKEN, or `lrbs serve` makes up one no worker knows"
    assert "LRBS_WORKER_TOKEN:?" in COMPOSE_FILE.read_text(), "LRBS_WORKER_TOKEN should be required: ${…:?message}"
    for name in WORKERS:
        ctx = parse_lrbs(command(name), environment(name), monkeypatch, name)
        assert ctx.info_name == "lrbs worker", f"{name}: should run `lrbs worker`, not `{ctx.info_name}`"
        url = urlsplit(ctx.params["url"])
        assert (url.hostname, url.port) == ("service", serve.params["port"]), (
            f"{name}: --url should be http://service:{serve.params['port']}, not {ctx.params['url']}"
        )
        assert ctx.params["token"] == token, f"{name}: LRBS_WORKER_TOKEN should be the service's"
        assert services()[name].get("depends_on", {}).get("service", {}).get("condition") == "service_healthy", (
            f"{name}: should wait for the service with condition service_healthy"
        )
        assert "env_file" not in services()[name], f"{name}: an env_file would hand the worker the database password"


def test_the_gpu_worker_reserves_an_nvidia_gpu_and_the_cpu_worker_has_a_profile():
    devices = services()["worker"].get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    gpus = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert gpus, f"worker: reserve a GPU (deploy.resources.reservations.devices, driver nvidia, [gpu]): {devices}"
    assert ("count" in gpus[0]) != ("device_ids" in gpus[0]), "worker: the GPU needs count or device_ids (not both)"
    assert services()["worker-cpu"].get("profiles"), "worker-cpu should only start under a profile (--profile cpu)"
    assert "deploy" not in services()["worker-cpu"], "worker-cpu should reserve no GPU"


def test_every_lrbs_variable_is_a_real_setting_of_the_process_that_gets_it():
    for name in lrbs_services():
        readers = WORKER_VARIABLES if name in WORKERS else SERVICE_SETTINGS
        what = "a variable `lrbs worker` reads" if name in WORKERS else "a field of lrbs.service.settings.Settings"
        for key in environment(name):
            assert key.startswith("LRBS_"), f"{name}: sets {key}, which lrbs does not read"
            assert key in readers, f"{name}: sets {key}, which is not {what}"
    _, documented = env_example()
    for key in documented:
        if key.startswith("LRBS_"):
            assert key in SERVICE_SETTINGS | WORKER_VARIABLES, f".env.example: {key} is no lrbs setting"
    for key in dockerfile_env(dockerfile_stages()[-1]):
        if key.startswith("LRBS_"):
            assert key in SERVICE_SETTINGS | WORKER_VARIABLES, f"Dockerfile: ENV {key} is no lrbs setting"


def test_env_example_documents_exactly_the_variables_compose_reads():
    values, documented = env_example()
    used = referenced_variables(COMPOSE_FILE.read_text())
    assert not used - documented, f".env.example should document {sorted(used - documented)} (docker-compose uses it)"
    assert not documented - used, f".env.example documents {sorted(documented - used)}, which docker-compose ignores"
    required = set(re.findall(r"\$\{([A-Z0-9_]+):?\?", COMPOSE_FILE.read_text()))
    assert required <= values.keys(), f".env.example should set the required {sorted(required - values.keys())}"


def test_images_build_from_this_dockerfile_with_its_arguments():
    args = dockerfile_args(dockerfile_stages()[0])
    for name in lrbs_services():
        build = resolved(services()[name], "build")
        assert isinstance(build, dict), f"{name}: should build the lrbs image (build: context …)"
        dockerfile = ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
        assert dockerfile.resolve() == DOCKERFILE, f"{name}: builds from {dockerfile}, not this Dockerfile"
        unknown = set(build.get("args", {})) - args.keys()
        assert not unknown, f"{name}: build args {sorted(unknown)} are not ARGs of the Dockerfile's builder stage"
        index = build.get("args", {}).get("TORCH_INDEX_URL") or args.get("TORCH_INDEX_URL")
        if name == "worker":
            assert "/whl/cu" in str(index), f"worker: the GPU worker needs a CUDA build of torch, not {index}"
        else:
            assert index == CPU_INDEX, f"{name}: should use the CPU build of torch ({CPU_INDEX}), not {index}"


# ---- Dockerfile and .dockerignore ----


def test_dockerfile_is_multi_stage_from_python_slim_with_a_torch_build_arg():
    stages = dockerfile_stages()
    froms = [stage[0][1] for stage in stages]
    assert len(stages) >= 2, f"the Dockerfile should have a builder and a runtime stage, has FROM {froms}"
    assert all(f.split()[0] == "python:3.11-slim" for f in froms), f"every stage should be python:3.11-slim: {froms}"
    builder = stages[0]
    assert dockerfile_args(builder).get("TORCH_INDEX_URL") == CPU_INDEX, (
        f"the builder stage should declare ARG TORCH_INDEX_URL={CPU_INDEX} (the CPU build by default)"
    )
    torch_installs = [
        rest
        for keyword, rest in builder
        if keyword == "RUN" and "pip install" in rest and re.search(r"\$\{?TORCH_INDEX_URL\}?", rest)
    ]
    assert torch_installs, "the builder should `pip install --index-url $TORCH_INDEX_URL … torch`"
    assert "-c constraints.txt" in torch_installs[0] and "torch" in torch_installs[0].split(), (
        "install torch with -c constraints.txt: the image gets the torch version the tests run"
    )


def test_runtime_stage_runs_lrbs_as_a_non_root_user(monkeypatch):
    runtime = dockerfile_stages()[-1]
    text = "\n".join(f"{keyword} {rest}" for keyword, rest in runtime)
    assert any(k == "COPY" and "--from=" in r for k, r in runtime), "the runtime stage should copy from the builder"
    assert "useradd" in text, "the runtime stage should create its user (useradd)"
    users = [rest for keyword, rest in runtime if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"the image should run as a non-root USER: {users}"
    assert any(k == "WORKDIR" for k, _ in runtime), "the runtime stage should set a WORKDIR"
    assert any(k == "EXPOSE" and "8000" in r.split() for k, r in runtime), "the runtime stage should EXPOSE 8000"
    for tool in ("build-essential", "gcc", "git ", "curl"):
        assert tool not in text, f"the runtime stage should hold no build or dev tools ({tool.strip()})"
    data_dir = dockerfile_env(runtime).get("LRBS_DATA_DIR")
    assert data_dir == environment("service").get("LRBS_DATA_DIR"), (
        "the image's LRBS_DATA_DIR should be the service's in docker-compose.yml"
    )
    assert re.search(rf"chown\b.*\blrbs\b.*{re.escape(str(Path(data_dir).parent))}", text), (
        f"{data_dir} should be owned by the image's user, so the named volume mounted there is writable"
    )
    cmd = [rest for keyword, rest in runtime if keyword == "CMD"]
    assert cmd, "the image should have a CMD that runs lrbs"
    parse_lrbs(json.loads(cmd[-1]), {}, monkeypatch, "the Dockerfile's CMD")


def test_dockerignore_keeps_the_venv_git_and_local_state_out_and_the_build_inputs_in():
    for path in (".venv", ".git", ".env", "lrbs.db", "lrbs-data", "lrbs/__pycache__/cli.cpython-311.pyc"):
        assert dockerignored(path), f".dockerignore should exclude {path}"
    sources = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY" and "--from=" not in rest:
            sources += rest.split()[:-1]
    assert sources, "the Dockerfile copies nothing from the context"
    for source in sources:
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"
        assert not dockerignored(source), f"the Dockerfile copies {source}, which .dockerignore excludes"


def test_every_data_file_of_the_package_ships_in_the_wheel():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"].get("package-data", {})
    missing = []
    for path in sorted((ROOT / "lrbs").rglob("*")):
        if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
            continue
        relative = path.relative_to(ROOT).as_posix()
        covered = False
        for package, patterns in package_data.items():
            folder = "lrbs" if package == "*" else package.replace(".", "/")
            if relative.startswith(folder + "/"):
                inside = relative[len(folder) + 1 :]
                covered = covered or any(fnmatch.fnmatch(inside, pattern) for pattern in patterns)
        if not covered:
            missing.append(relative)
    assert not missing, f"pyproject.toml's package-data leaves {missing} out of the wheel the Docker image installs"


@pytest.mark.parametrize(
    "script", sorted((ROOT / "deploy").glob("*.sh")) + [ROOT / "deploy/offline/postgres-entrypoint.sh"]
)
def test_the_deploy_scripts_parse_and_are_executable(script):
    import subprocess

    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    parsed = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr

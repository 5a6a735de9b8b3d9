# The lrbs image: one image for every role (`lrbs serve`, `lrbs worker`, `lrbs db upgrade`, `lrbs keys ...`);
# docker-compose.yml picks the command. TORCH_INDEX_URL picks the PyTorch build:
#   docker build -t lrbs:cpu .                                                               (CPU, the default)
#   docker build -t lrbs:cuda --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .   (a GPU worker)
# The torch version is the one constraints.txt pins (the version the test suite runs); the index must carry it.

# ---- builder: a virtualenv at /opt/venv holding torch, the dependencies and the lrbs wheel ----
FROM python:3.11-slim AS builder

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv
WORKDIR /src

# torch first, from the PyTorch index alone: PyPI's Linux torch is the CUDA build, and this layer is the big one.
COPY constraints.txt ./
RUN pip install --index-url "${TORCH_INDEX_URL}" -c constraints.txt torch

# The other dependencies, read from pyproject.toml, so a change to the code alone does not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt

# The lrbs wheel. Then a smoke test of the installed package, from / with -P (the source tree is not on sys.path),
# so a data file missing from the wheel fails the build here instead of the containers later.
COPY lrbs ./lrbs
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && pip install -c constraints.txt /wheels/lrbs-*.whl \
    && cd / \
    && python -P -c "import lrbs.service.app, lrbs.worker.runner, lrbs.schedules" \
    && lrbs --help > /dev/null

# ---- runtime: the same slim Python, the virtualenv, a non-root user; no compilers, no build files ----
FROM python:3.11-slim AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LRBS_DATA_DIR=/var/lib/lrbs/data

# The data folder exists in the image, owned by lrbs, so a named volume mounted there starts out owned by lrbs too.
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin lrbs \
    && mkdir -p /var/lib/lrbs/data \
    && chown -R lrbs:lrbs /var/lib/lrbs

COPY --from=builder /opt/venv /opt/venv

# SQLite's default ./lrbs.db (when LRBS_DATABASE_URL is unset) lands here, writable by lrbs.
WORKDIR /var/lib/lrbs
USER lrbs
EXPOSE 8000

# docker-compose.yml gives each container its command; alone, the image lists them.
CMD ["lrbs", "--help"]

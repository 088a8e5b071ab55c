# recograph's image: `recograph serve` by default, `recograph worker` for the jobs and the event consumer.
#
#   docker build -t recograph .
#   docker run -e MONGODB_URL=... -e REDIS_URL=... -e QDRANT_URL=... -p 8000:8000 recograph
#   docker run --no-healthcheck -e ... recograph worker
#
# The image runs against MongoDB, Redis and Qdrant servers (MONGODB_URL, REDIS_URL, QDRANT_URL): the embedded servers
# of `make run` (the `embedded` extra, with GPL-2.0 SecantusDB) are not in it.
#
# torch is the CPU build, pinned as in pyproject.toml (a test checks the two agree). It comes from TORCH_INDEX_URL,
# PyTorch's CPU wheel index by default: the default index's Linux wheel would bring gigabytes of CUDA libraries.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Compilers for the dependencies without a wheel for this platform (implicit builds from source where it has none);
# they stay in this stage. Debian's versions follow the base image's point release, so they are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/recograph
ENV PATH=/opt/recograph/bin:$PATH
RUN pip install --no-cache-dir pip==26.3 \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY graph ./graph
COPY resolvers ./resolvers
COPY domain ./domain
COPY workers ./workers
COPY models ./models
# torch is installed already, so the project's own pin of it is satisfied without reaching the default index.
RUN pip install --no-cache-dir . \
    && python -c "import torch; assert not torch.version.cuda, torch.version.cuda"

FROM ${PYTHON_IMAGE} AS runtime
# libgomp1: OpenMP, which implicit and torch's CPU kernels load at run time.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 recograph \
    && useradd --system --uid 10001 --gid recograph --home-dir /var/lib/recograph --shell /usr/sbin/nologin recograph \
    && install -d -o recograph -g recograph /var/lib/recograph
COPY --from=build /opt/recograph /opt/recograph
ENV PATH=/opt/recograph/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RECOGRAPH_HOST=0.0.0.0 \
    RECOGRAPH_PORT=8000 \
    RECOGRAPH_DATA_DIR=/var/lib/recograph \
    RECOGRAPH_MODELS_DIR=/var/lib/recograph/models
WORKDIR /var/lib/recograph
USER 10001:10001
EXPOSE 8000
# /health/live answers while the process serves (it names the pid that answered); the standard library asks it.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; \
u.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('RECOGRAPH_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["recograph"]
CMD ["serve"]

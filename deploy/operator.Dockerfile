# The operator image: the `tributary` CLI (libs/operator) and the libs it needs, no service.
# It runs `tributary bootstrap` (compose's bootstrap service, the Kubernetes bootstrap Job) and
# any other operator command, built from the repository root:
#
#   docker build -f deploy/operator.Dockerfile -t tributary/operator .
#   docker run --rm --env-file deploy/env/common.env tributary/operator status
#
# unixodbc + tdsodbc: `tributary thresholds import --mssql-dsn` reads the legacy SQL Server.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY constraints.txt ./
COPY libs/ libs/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install -c constraints.txt libs/contracts libs/runtime libs/access \
      libs/sqlserver libs/operator \
 && /opt/venv/bin/tributary --help > /dev/null

FROM ${PYTHON_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Unpinned on purpose, as in deploy/Dockerfile: the base image's Debian suite decides.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends unixodbc tdsodbc \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tributary \
 && useradd --system --uid 10001 --gid tributary --home-dir /var/lib/tributary --create-home tributary
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /var/lib/tributary
ENTRYPOINT ["tributary"]
CMD ["--help"]

# syntax=docker/dockerfile:1
# The kubetask image: one image for both processes, `kubetask operator` and
# `kubetask worker` (the chart sets the command). Small and non-root: a wheel
# of kubetask and its dependencies is built in a throw-away stage and installed
# into a slim Python; the image runs as uid/gid 65532 and needs no writable
# file system but /tmp (the chart mounts an emptyDir there).
#
#   docker build -t kubetask:0.1.0 .
#
# Your own handlers: build a worker image FROM this one, install your package,
# and name its handler module(s) in KUBETASK_HANDLERS (or register them under
# the `kubetask.handlers` entry-point group, which needs no variable at all):
#
#   FROM kubetask:0.1.0
#   USER root
#   RUN pip install --no-cache-dir myapp==1.4.2
#   USER 65532:65532
#   ENV KUBETASK_HANDLERS=myapp.tasks
#
# then point a pool of the chart at it:
#   pools: [{name: default, image: {repository: registry.example.com/myapp-worker, tag: "1.4.2"}}]

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY operator ./operator
# Wheels for kubetask and every dependency: the final stage installs offline.
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels kubetask \
    && groupadd --system --gid 65532 kubetask \
    && useradd --system --uid 65532 --gid 65532 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin kubetask
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["kubetask"]
CMD ["--help"]

# imgzoo container images (docs/deploy.md).
#
#   serve (default, last stage)  the HTTP service: FastAPI + ONNX Runtime, no torch
#   train                        torch; trains and exports into the model repository volume
#
# Build arguments:
#   BASE_IMAGE         a Debian-based image with Python 3.11 and its venv module
#                      (default python:3.11-slim; the deploy test uses a debootstrapped one)
#   ORT_PACKAGE        ONNX Runtime of the serve image. The default, onnxruntime-gpu with its
#                      CUDA and cuDNN libraries from pip, runs on the GPU under `--gpus all` and
#                      falls back to the CPU elsewhere; `onnxruntime` gives a far smaller
#                      CPU-only image.
#   TRAIN_ORT_PACKAGE  ONNX Runtime of the train image (parity checks only; default CPU).
#
# Wheels come from deploy/wheels/<target>/ when deploy/build-wheelhouse.sh filled it (no
# network needed inside the build), else from PyPI.
# Stages a target does not need are skipped by BuildKit (the default builder).

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS base
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8
# python3 is /usr/local/bin/python3 in the official image and /usr/bin/python3 on Debian's;
# everything after this line uses the venv's.
RUN python3 -m venv "$VIRTUAL_ENV" \
    && groupadd --system --gid 10001 imgzoo \
    && useradd --system --uid 10001 --gid imgzoo --home-dir /home/imgzoo --create-home \
        --shell /usr/sbin/nologin imgzoo \
    && install -d -o imgzoo -g imgzoo -m 755 /models

# The project's sources, copied after the dependencies so a code change reuses their layer.
FROM base AS source
WORKDIR /src
COPY pyproject.toml README.md ./
COPY imgzoo/ imgzoo/
COPY models/ models/
COPY training/ training/
COPY export/ export/
COPY service/ service/

FROM base AS build-context
WORKDIR /src
COPY pyproject.toml ./
COPY requirements/constraints.txt requirements/constraints.txt
COPY deploy/requirements.py deploy/requirements.py
COPY deploy/image-pip-install.sh /usr/local/bin/imgzoo-pip-install

FROM build-context AS train-build
ARG TRAIN_ORT_PACKAGE=onnxruntime
COPY deploy/wheels/train/ /wheels/
RUN python3 deploy/requirements.py pyproject.toml train --ort "$TRAIN_ORT_PACKAGE" > requirements.txt \
    && imgzoo-pip-install deps
COPY --from=source /src /src
RUN imgzoo-pip-install project

FROM build-context AS serve-build
ARG ORT_PACKAGE=onnxruntime-gpu[cuda,cudnn]
COPY deploy/wheels/serve/ /wheels/
RUN python3 deploy/requirements.py pyproject.toml serve --ort "$ORT_PACKAGE" > requirements.txt \
    && imgzoo-pip-install deps
COPY --from=source /src /src
RUN imgzoo-pip-install project \
    && python3 -c "import service.app, onnxruntime; print('onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())" \
    && if python3 -c "import torch" 2>/dev/null; then echo "torch leaked into the serve image" >&2; exit 1; fi

# Trains the demo model and exports it into /models; override the command for real recipes,
# e.g. `train --recipe cifar10_fastnet --data-root /data` then `export ... --repository /models`.
FROM base AS train
COPY --from=train-build /opt/venv /opt/venv
ENV IMGZOO_REPOSITORY=/models
USER 10001:10001
WORKDIR /home/imgzoo
VOLUME ["/models"]
ENTRYPOINT ["imgzoo"]
CMD ["demo", "--no-serve", "--no-progress", "--repository", "/models", "--runs", "/home/imgzoo/runs", "--samples", "/home/imgzoo/samples"]

# The service. Mount the model repository read-only at /models.
FROM base AS serve
COPY --from=serve-build /opt/venv /opt/venv
ENV IMGZOO_REPOSITORY=/models \
    IMGZOO_HOST=0.0.0.0 \
    IMGZOO_PORT=8000
USER 10001:10001
WORKDIR /home/imgzoo
VOLUME ["/models"]
EXPOSE 8000
# No curl in the image: the venv's Python asks /healthz (urlopen raises on a non-2xx answer).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('IMGZOO_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["imgzoo"]
CMD ["serve"]

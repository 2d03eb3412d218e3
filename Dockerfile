# syntax=docker/dockerfile:1
# unprompt's HTTP service. The CPU image serves the lite profile out of the box:
#   docker build -t unprompt . && docker run -p 8000:8000 unprompt
# CUDA image with faiss-gpu (for the kaggle profile; mount CLIP weights and heads into /var/lib/unprompt):
#   docker build --build-arg VARIANT=cuda -t unprompt:cuda .
ARG VARIANT=cpu

FROM python:3.11-slim AS base-cpu
ENV FAISS_PACKAGE=""

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS base-cuda
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
    && rm -rf /var/lib/apt/lists/*
ENV FAISS_PACKAGE="faiss-gpu-cu12"

FROM base-${VARIANT}
ENV PYTHONUNBUFFERED=1 UNPROMPT_HOME=/var/lib/unprompt
WORKDIR /app
COPY . /app
# The README's setup command: installs into /app/.venv and builds the lite component index.
RUN bash .ci/setup
RUN if [ -n "$FAISS_PACKAGE" ]; then .venv/bin/pip uninstall -y faiss-cpu && .venv/bin/pip install "$FAISS_PACKAGE"; fi
RUN useradd --system --create-home --uid 10001 unprompt && chown -R unprompt /var/lib/unprompt
USER unprompt
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD [".venv/bin/unprompt", "serve", "--host", "0.0.0.0", "--port", "8000"]

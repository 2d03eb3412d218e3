# syntax=docker/dockerfile:1
# unprompt's HTTP service, in two stages: `build` installs unprompt (a wheel, not a checkout) into /opt/venv and
# builds the lite component index; `runtime` copies only those two folders and serves as a non-root user.
#   docker build -t unprompt . && docker run -p 8000:8000 unprompt                       # CPU torch, lite profile
#   docker build --build-arg VARIANT=cuda -t unprompt:cuda .                            # CUDA torch and faiss-gpu
# For the kaggle profile, mount CLIP checkpoints, indexes and heads into /var/lib/unprompt and set UNPROMPT_PROFILE.
ARG VARIANT=cpu

FROM python:3.11-slim AS base-cpu
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu FAISS_PACKAGE=faiss-cpu

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS base-cuda
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
# faiss-gpu-cu12 pinned like everything else (PyPI has cp312 manylinux2014 wheels of 1.14.1.post1; it needs numpy 2
# and pulls CUDA 12 runtime wheels); the build record (build.json) names the faiss that wrote each index
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 FAISS_PACKAGE=faiss-gpu-cu12==1.14.1.post1

FROM base-${VARIANT} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY .ci/constraints.txt .ci/constraints.txt
COPY retriever retriever
COPY index_build index_build
COPY api api
COPY data_manifests data_manifests
# torch first, from the index of the variant's build (CPU or CUDA); then unprompt itself, pinned like CI
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" torch==2.13.0 torchvision==0.28.0 \
    && /opt/venv/bin/pip install --no-cache-dir -c .ci/constraints.txt . \
    && if [ "$FAISS_PACKAGE" != "faiss-cpu" ]; then \
         /opt/venv/bin/pip uninstall -y faiss-cpu && /opt/venv/bin/pip install --no-cache-dir "$FAISS_PACKAGE"; fi
ENV UNPROMPT_HOME=/var/lib/unprompt
RUN /opt/venv/bin/unprompt setup

FROM base-${VARIANT} AS runtime
COPY --from=build /opt/venv /opt/venv
COPY --from=build /var/lib/unprompt /var/lib/unprompt
RUN useradd --system --create-home --uid 10001 unprompt && chown -R unprompt /var/lib/unprompt
ENV PATH=/opt/venv/bin:$PATH UNPROMPT_HOME=/var/lib/unprompt PYTHONUNBUFFERED=1
USER unprompt
WORKDIR /home/unprompt
EXPOSE 8000
# models load for about a minute on a CPU before /readyz answers
HEALTHCHECK --start-period=180s --interval=30s --timeout=5s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz')"]
CMD ["unprompt", "serve", "--host", "0.0.0.0", "--port", "8000"]

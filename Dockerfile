# syntax=docker/dockerfile:1
# CPU image serving the lite profile. For CUDA: --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG BASE=python:3.11-slim
FROM ${BASE}
ENV PYTHONUNBUFFERED=1 UNPROMPT_HOME=/var/lib/unprompt
WORKDIR /app
COPY . /app
RUN bash .ci/setup
EXPOSE 8000
CMD [".venv/bin/unprompt", "predict", "--help"]

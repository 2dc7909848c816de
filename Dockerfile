# syntax=docker/dockerfile:1
# Trainer image; the base image decides the device:
#   CPU:    docker build --target trainer -t solov2-trainer:cpu .
#   CUDA:   docker build --target trainer --build-arg BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime \
#             --build-arg TORCH_SPEC= -t solov2-trainer:cuda .
#   Ascend: docker build --target trainer --build-arg BASE_IMAGE=<an image with CANN, torch and torch_npu> \
#             --build-arg TORCH_SPEC= -t solov2-trainer:npu .
# TORCH_SPEC empty keeps the base image's torch (and torch_npu), which must be >= 2.4.

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS trainer
ARG TORCH_SPEC="torch==2.5.1 torchvision==0.20.1 --index-url https://download.pytorch.org/whl/cpu"
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TORCH_DEVICE_BACKEND_AUTOLOAD=0
WORKDIR /opt/solov2
RUN if [ -n "$TORCH_SPEC" ]; then pip install $TORCH_SPEC; fi
COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY operator ./operator
RUN pip install ".[trainer]"
# The ModelZoo-style entry points: /opt/solov2/trainer/scripts/train_full_8p.sh --data_path=/data/coco
ENV PATH=/opt/solov2/trainer/scripts:$PATH
ENTRYPOINT ["solov2"]
CMD ["--help"]

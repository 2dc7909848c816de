# syntax=docker/dockerfile:1
# Two images from one file:
#   operator  slim image of the Kubernetes operator (no torch):
#               docker build --target operator -t solov2-operator:0.1.0 .
#   trainer   the trainer; the base image decides the device:
#     CPU:    docker build --target trainer -t solov2-trainer:cpu .
#     CUDA:   docker build --target trainer --build-arg BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime \
#               --build-arg INSTALL_TORCH=0 -t solov2-trainer:cuda .
#     Ascend: docker build --target trainer --build-arg BASE_IMAGE=<a CANN image with Python, CANN's
#               environment set in ENV> --build-arg TORCH_VERSION=2.14.0 --build-arg TORCHVISION_VERSION=0.29.0 \
#               --build-arg TORCH_NPU_VERSION=2.14.0 -t solov2-trainer:npu .
# torch_npu must be built for exactly the installed torch: the build stops when their versions differ.

ARG BASE_IMAGE=python:3.11-slim
ARG PYTHON_IMAGE=python:3.11-slim

# The project's wheel, built once for both images. Both install it by its file (a direct reference), so
# pip never looks for a package of that name on an index; only the dependencies come from one.
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY operator ./operator
COPY contract ./contract
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS operator
ARG VERSION=0.1.0
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir "solov2-operator[operator] @ file:///wheels/solov2_operator-${VERSION}-py3-none-any.whl" \
    && useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin solov2
USER 1000:1000
ENTRYPOINT ["solov2-operator"]

FROM ${BASE_IMAGE} AS trainer
ARG VERSION=0.1.0
# INSTALL_TORCH=0 keeps the base image's torch (a CUDA PyTorch image); otherwise these versions are
# installed from TORCH_INDEX_URL (the CPU wheels by default).
ARG INSTALL_TORCH=1
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Ascend: the torch_npu release for TORCH_VERSION (e.g. 2.14.0, or a .postN of it); empty: no torch_npu.
ARG TORCH_NPU_VERSION=""
# The project's extras: "trainer,export" gives `solov2 export` (onnx, onnxscript, onnxruntime) too;
# "trainer" leaves them out of a training-only image.
ARG TRAINER_EXTRAS="trainer,export"
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY docker/check_torch_npu.py /tmp/check_torch_npu.py
RUN if [ "$INSTALL_TORCH" = 1 ]; then \
        pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" \
            "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"; \
    fi \
    && if [ -n "$TORCH_NPU_VERSION" ]; then pip install --no-cache-dir "torch-npu==${TORCH_NPU_VERSION}"; fi \
    && python /tmp/check_torch_npu.py
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir "solov2-operator[${TRAINER_EXTRAS}] @ file:///wheels/solov2_operator-${VERSION}-py3-none-any.whl" \
    && command -v torchrun \
    && (getent passwd 1000 >/dev/null || useradd --uid 1000 --user-group --create-home --shell /bin/bash solov2) \
    && install -d -o 1000 -g 1000 /workspace
# The ModelZoo-style entry points on PATH: train_full_8p.sh --data_path=/data/coco
COPY --chmod=0755 trainer/scripts /opt/solov2/scripts
ENV PATH=/opt/solov2/scripts:$PATH
WORKDIR /workspace
USER 1000:1000
ENTRYPOINT ["solov2"]
CMD ["--help"]

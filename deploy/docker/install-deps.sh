#!/bin/sh
# Install torch and the third-party requirements of one image flavour into the active
# environment (the image's /opt/venv). Called by the Dockerfile's build stage; the
# project itself is installed afterwards with `pip install --no-deps .`.
#
#   cpu: torch from the PyTorch CPU index (no CUDA libraries: about 200 MB instead of
#        several GB), then pyproject's dependencies (faiss-cpu, onnxruntime).
#   gpu: torch from PyPI, whose Linux x86_64 build of 2.13.0 is the CUDA 13.0 one (its
#        CUDA and cuDNN libraries arrive as nvidia-* wheels), then the dependencies with
#        the `gpu` extra in place of faiss-cpu / onnxruntime. See docs/deployment.md,
#        "GPU image: CUDA versions", for why these wheels fit together.
set -eu

flavour="${1:?usage: install-deps.sh cpu|gpu}"
torch_version="${TORCH_VERSION:-2.13.0}"
torch_cpu_index="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
here="$(dirname "$0")"

case "$flavour" in
  cpu) pip install --index-url "$torch_cpu_index" "torch==${torch_version}" ;;
  gpu) pip install "torch==${torch_version}" ;;
  *) echo "flavour '$flavour' not supported; choose from cpu, gpu" >&2; exit 2 ;;
esac

python3 "$here/requirements.py" "$flavour" pyproject.toml > /tmp/requirements.txt
# torch is already there and satisfies the project's range, so pip keeps this build.
pip install -r /tmp/requirements.txt
rm /tmp/requirements.txt

#!/usr/bin/env sh
# Install torch into a virtual environment before anything that depends on it, and write the pin
# that holds every later install to that build (VENV/torch-pin.txt).
#
#   sh scripts/install-torch.sh VENV TORCH_VERSION CPU_INDEX_URL
#
# The default CUDA build where nvidia-smi finds a GPU; elsewhere the CPU build (a plain
# `pip install torch` on a CPU machine pulls a multi-GB CUDA build): from CPU_INDEX_URL where it
# resolves, else the local CPU wheel that pip finds for the exact pin. Used by `make setup` and
# `make engine`.
set -eu
venv=$1; version=$2; index=$3
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  echo "NVIDIA GPU found: installing the CUDA build of torch $version into $venv"
  "$venv/bin/pip" install "torch==$version"
elif "$venv/bin/python" -c "import socket,sys,urllib.parse as u; socket.getaddrinfo(u.urlparse(sys.argv[1]).hostname, 443)" "$index" 2>/dev/null; then
  echo "no GPU: installing the CPU build of torch $version into $venv"
  "$venv/bin/pip" install "torch==$version+cpu" --extra-index-url "$index"
else
  echo "no GPU, $index unreachable: installing the local CPU build of torch $version into $venv"
  "$venv/bin/pip" install "torch==$version+cpu"
fi
"$venv/bin/python" -c "import torch; print('torch', torch.__version__)" > "$venv/torch-version.txt"
"$venv/bin/python" -c "import torch; print('torch==' + torch.__version__)" > "$venv/torch-pin.txt"

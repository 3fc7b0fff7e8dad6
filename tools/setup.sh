#!/usr/bin/env bash
# Set up a virtual environment in .venv with streambatch and its test tools.
# Where no torch is installed yet, take the CPU build (a plain `pip install torch`
# on Linux pulls a multi-GB CUDA build); an existing torch is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
    "$VPY" -m pip install --retries 1 "torch==2.13.0+cpu" \
        --extra-index-url https://download.pytorch.org/whl/cpu \
      || "$VPY" -m pip install --retries 1 "torch>=2.1" --index-url https://download.pytorch.org/whl/cpu
fi
"$VPY" -m pip install -e ".[${EXTRAS:-test,bench}]"

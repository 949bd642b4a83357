#!/usr/bin/env bash
# Installs the peers of bench/run.py (PyTorch CPU and NumPy, from PyPI) into bench/.venv. Not needed for the
# tests. Then: bench/.venv/bin/python bench/run.py
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet torch numpy
.venv/bin/python -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__)"

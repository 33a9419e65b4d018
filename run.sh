#!/usr/bin/env bash
# Set up a virtual environment (CPU PyTorch, pcl and its dev tools) in .venv, then run the embedded quickstart:
# a tiny model trained from scratch with PCL on CPU, then its calibration report (outputs/quickstart/).
#   ./run.sh                      set up (first time only) and run the quickstart
#   ./run.sh --setup-only         set up only
#   ./run.sh --max_steps 20 ...   extra flags go to `pcl train recipes/quickstart.yaml`
set -euo pipefail
cd "$(dirname "$0")"
export HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ ! -x .venv/bin/pcl ] || [ pyproject.toml -nt .venv/.pcl-installed ]; then
  echo "Setting up .venv (about 2 minutes the first time)..."
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "is ignored" || true
  # The CPU build of torch first, so the dependencies below do not pull a multi-GB CUDA build
  .venv/bin/pip install -q "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
  .venv/bin/pip install -q -e ".[dev]" 2>&1 | grep -v -e "is ignored" -e "BuildBackendWarning" || true
  .venv/bin/python -c "import pcl, torch, trl" || { echo "setup failed: see the pip output above" >&2; exit 1; }
  touch .venv/.pcl-installed
fi
if [ "${1:-}" = "--setup-only" ]; then
  exit 0
fi
exec .venv/bin/pcl train recipes/quickstart.yaml "$@"

#!/usr/bin/env bash
# Set up a virtual environment (CPU PyTorch, pcl and its dev tools) in .venv, then run the embedded quickstart:
# a tiny model trained from scratch with PCL on CPU (SFT, PCL-GRPO, more SFT on gold answers, then a stage that
# distils the self-score), benchmarked after SFT, after GRPO and at the end (outputs/quickstart/calibration/).
#   ./run.sh                      set up (first time only) and run the quickstart
#   ./run.sh --setup-only         set up only
#   ./run.sh --max_steps 20 ...   extra flags go to `pcl train recipes/quickstart.yaml`
set -euo pipefail
cd "$(dirname "$0")"
export HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ ! -x .venv/bin/pcl ] || [ pyproject.toml -nt .venv/.pcl-installed ]; then
  echo "Setting up .venv (about 2 minutes the first time)..."
  log=$(mktemp)
  # The CPU build of torch first, so the dependencies below do not pull a multi-GB CUDA build
  if ! { python3 -m venv .venv &&
         .venv/bin/pip install -q --disable-pip-version-check --upgrade pip &&
         .venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0" &&
         .venv/bin/pip install -q --disable-pip-version-check -e ".[dev]" &&
         .venv/bin/python -c "import pcl, torch, trl"; } > "$log" 2>&1; then
    cat "$log" >&2
    echo "setup failed: see the output above" >&2
    exit 1
  fi
  rm -f "$log"
  touch .venv/.pcl-installed
  echo "Set up .venv with pcl $(.venv/bin/python -c 'import pcl; print(pcl.__version__)')."
fi
if [ "${1:-}" = "--setup-only" ]; then
  exit 0
fi
exec .venv/bin/pcl train recipes/quickstart.yaml "$@"

#!/usr/bin/env bash
# GPU check: bf16 scoring + training on a 1B-shaped random Llama, iterdpo next to TRL (if importable).
#   bash benchmarks/gpu/check.sh [--smoke] [--pairs N] [--batch-size B] [--steps S]
# At most 8 minutes on one H200 (the whole script is cut at 470 s). Torch + transformers +
# accelerate + this repository only; nothing is downloaded. See benchmarks/gpu/check.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
python - <<'PY'
import importlib.util, sys
missing = [m for m in ("torch", "transformers", "accelerate", "pyarrow", "tokenizers") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"[gpu-check] missing packages: {', '.join(missing)}")
PY
exec timeout 470 python benchmarks/gpu/check.py "$@"

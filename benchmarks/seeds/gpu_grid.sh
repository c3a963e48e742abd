#!/usr/bin/env bash
# The seeds grid at its GPU size on one H200 machine (16 CPU cores) in at most 10 minutes:
#   bash benchmarks/seeds/gpu_grid.sh [SEEDS] [WORKERS]        (defaults 8 seeds, 12 workers)
# Nothing is downloaded and nothing is carried beside the code: the world task (a 0.6M-parameter
# Llama, its SFT model and gold reward model) is built here from iterdpo/toy/world.py into
# $ITERDPO_CACHE (default ./.gpu_cache, ~10 MiB) before the grid. Results go to $OUT/seeds_gpu
# (or benchmarks/seeds/out_gpu): records/, results/results.{csv,md}, meta.json, wall and load lines.
# Size 'gpu' (benchmarks/seeds/grid.py): 001 / ctl at 512 prompts x 3 iterations, 002 at S = 512,
# M = 64, 003 on |D| = 1024 with every loss at noise 0 and 0.4, 000 on 256 pool prompts,
# evaluation on 200 held-out prompts x 8 answers. NOT RUN YET: no GPU machine was lent to the
# session that wrote it; the sizes are extrapolated from the CPU grid's measured per-run costs
# (benchmarks/seeds/README.md), so the first run should check wall time per run (the harness
# prints one line per run) and drop seeds if it would pass the 540 s cut below.
# The models are tiny: every worker process puts its model on the GPU (cuda when available),
# but kernel launches, not FLOPs, bound them, so the 16 CPU cores (one worker each) are what
# buys the speed; the GPU mostly frees the CPU from the matrix products.
set -euo pipefail
cd "$(dirname "$0")/../.."
SEEDS=${1:-8}
WORKERS=${2:-12}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled OMP_NUM_THREADS=1
export ITERDPO_CACHE=${ITERDPO_CACHE:-$PWD/.gpu_cache}
DEST=${OUT:-$PWD/benchmarks/seeds}/seeds_gpu
[ -n "${OUT:-}" ] || DEST=$PWD/benchmarks/seeds/out_gpu
mkdir -p "$DEST"
python - <<'PY'
import importlib.util, sys
missing = [m for m in ("torch", "transformers", "accelerate", "pyarrow", "tokenizers", "pydantic", "yaml") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"[seeds-gpu] missing packages: {', '.join(missing)}")
import torch
print(f"[seeds-gpu] torch {torch.__version__}, cuda available: {torch.cuda.is_available()}", flush=True)
PY
start=$(date +%s)
uptime | tee "$DEST/load_start.txt"
# the world build uses every core (build_threads); ~5 CPU-minutes on one thread
OMP_NUM_THREADS=8 timeout 180 python -m iterdpo.toy.world --seed 0 > "$DEST/world_build.log" 2>&1
echo "[seeds-gpu] world ready after $(( $(date +%s) - start )) s"
# the grid; a cut run resumes from its records when the script is run again
set +e
timeout $(( 570 - ($(date +%s) - start) )) python benchmarks/seeds/run.py --size gpu --seeds "$SEEDS" --workers "$WORKERS" \
    --out "$DEST" 2>&1 | tee "$DEST/harness.log"
rc=${PIPESTATUS[0]}
set -e
uptime | tee "$DEST/load_end.txt"
echo "[seeds-gpu] grid rc=$rc, total $(( $(date +%s) - start )) s wall" | tee -a "$DEST/harness.log"
# a cut grid still gets its report from the finished records
[ "$rc" = 0 ] || python benchmarks/seeds/run.py --size gpu --seeds "$SEEDS" --workers 1 --out "$DEST" --report-only || true

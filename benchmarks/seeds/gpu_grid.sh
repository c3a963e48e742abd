#!/usr/bin/env bash
# The seeds grid on one H200 machine (16 CPU cores) in at most 10 minutes:
#   bash benchmarks/seeds/gpu_grid.sh [SEEDS] [WORKERS]        (defaults 6 seeds, 14 workers)
# Nothing is downloaded and nothing is carried beside the code: the world task (a 0.6M-parameter
# Llama, its SFT model and gold reward model, ~10 MiB) is built here from iterdpo/toy/world.py
# into $ITERDPO_CACHE (default ./.gpu_cache). Results: $OUT/seeds_gpu (or benchmarks/seeds/out_gpu):
# records/, results/results.{csv,md} with the verdicts, meta.json, harness.log, load and timing.
#
# Sizes: the 'full' setups of the CPU grid (benchmarks/seeds/README.md), so the two grids' numbers
# are comparable, at more seeds: the primary claims only (the control, 001's margins, 000 at 4x
# SEEDS, 003 DPO at noise 0.4 and 0, 002), in that order, cut at 540 s; a cut grid resumes
# from its records when run again, and the report covers whatever finished.
# Sizing (not measured on such a machine: no GPU was lent to the session that wrote this): on the
# 2-core CPU box a seed of these claims costs ~1,100 CPU-s (README's cost table); 14 workers x
# ~500 s = ~7,000 worker-s, so 6 seeds if each worker gets a core. The models are tiny: a worker
# puts its model on the GPU when CUDA is available, but kernel launches, not FLOPs, bound them,
# so the cores decide the speed. Check the per-run seconds of the first run before trusting it.
set -euo pipefail
cd "$(dirname "$0")/../.."
SEEDS=${1:-6}
WORKERS=${2:-14}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled OMP_NUM_THREADS=1
export ITERDPO_CACHE=${ITERDPO_CACHE:-$PWD/.gpu_cache}
if [ -n "${OUT:-}" ]; then DEST=$OUT/seeds_gpu; else DEST=$PWD/benchmarks/seeds/out_gpu; fi
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
left() { echo $(( 560 - ($(date +%s) - start) )); }
uptime | tee "$DEST/load_start.txt"
OMP_NUM_THREADS=8 timeout 200 python -m iterdpo.toy.world --seed 0 > "$DEST/world_build.log" 2>&1
echo "[seeds-gpu] world ready after $(( $(date +%s) - start )) s"
set +e
for step in "--only ctl,001 --settings control;margin" "--only 000 --paper-seeds 000=$((4 * SEEDS))" \
            "--only 003 --settings dpo noise=0.4;dpo noise=0.0" "--only 002"; do
    [ "$(left)" -gt 30 ] || break
    read -r -a args <<< "${step%%--settings*}"
    settings=()
    [[ "$step" == *--settings* ]] && settings=(--settings "${step#*--settings }")
    timeout "$(left)" python benchmarks/seeds/run.py --size full --seeds "$SEEDS" --workers "$WORKERS" --out "$DEST" "${args[@]}" "${settings[@]}" \
        2>&1 | grep --line-buffered -v -e resource_tracker -e "warnings.warn" | tee -a "$DEST/harness.log"
done
set -e
uptime | tee "$DEST/load_end.txt"
python benchmarks/seeds/run.py --size full --seeds "$SEEDS" --paper-seeds "000=$((4 * SEEDS))" --out "$DEST" --report-only 2>&1 | tail -2
echo "[seeds-gpu] total $(( $(date +%s) - start )) s wall" | tee -a "$DEST/harness.log"

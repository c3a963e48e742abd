#!/usr/bin/env bash
# The third grid's 16-core part (claims.yaml, 11:33), on one H200 machine's CPUs in at most ~9 minutes:
#   bash benchmarks/seeds/gpu_grid.sh [FIRST_SEED] [SEEDS] [WORKERS] [SECONDS]   (defaults 4 4 14 500)
# 1. every primary claim and the control at seeds FIRST_SEED.. (ctl, 001 margins, 002, 003 DPO at
#    noise 0.4 and 0), seed-major, longest runs first;  2. SeRA with IPO / SLiC / SimPO (secondary)
#    at seeds 0..SEEDS-1. The CPU grid (cpu_grid.sh, 2 cores) runs every other setting at seeds 0-3;
#    `run.py --report-only` over the union of both OUTs' records pools them (a run is a deterministic
#    function of its seed on either machine).
# CPU only (CUDA_VISIBLE_DEVICES empty): the models have 0.6M parameters, so kernel launches, not
# FLOPs, would bound them on a GPU, and CPU runs are the same computation as the CPU grid's.
# Nothing is downloaded: the world (~6 MiB) comes from $ITERDPO_CACHE (default ./.gpu/cache) or is
# built here (2-3 min with 8 threads); pi_0 from $WARM (a finished warm start folder: OUT/warm of
# the CPU grid) or is built here (~90 s). Results: $OUT/seeds_gpu (else benchmarks/seeds/out_gpu):
# records/, results/, harness.log, load; cut at SECONDS, resumable from the records.
# Measured on one H200 machine (2026-12-04, `WARM=<cpu OUT>/warm bash benchmarks/seeds/gpu_grid.sh 4 4 14 470`
# on cores 2-15 beside the GPU check): step 1's 56 runs in 406 s wall, 5,011 CPU-s (a 001 / control
# run 101-138 CPU-s there vs 87-113 on the 2-core box: its cores are ~1.15x slower); step 2 then had
# 60 s left (3 of 36 runs). A whole 16-core grid of the primary claims at 4 seeds: ~7 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
FIRST=${1:-4}
SEEDS=${2:-4}
WORKERS=${3:-14}
BUDGET=${4:-500}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=
export ITERDPO_CACHE=${ITERDPO_CACHE:-$PWD/.gpu/cache}
if [ -n "${OUT:-}" ]; then DEST=$OUT/seeds_gpu; else DEST=$PWD/benchmarks/seeds/out_gpu; fi
mkdir -p "$DEST"
python - <<'PY'
import importlib.util, sys
missing = [m for m in ("torch", "transformers", "accelerate", "pyarrow", "tokenizers", "pydantic", "yaml") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"[seeds-16] missing packages: {', '.join(missing)}")
PY
start=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - start) )); }
uptime | tee "$DEST/load_start.txt"
OMP_NUM_THREADS=8 timeout 200 python -m iterdpo.toy.world --seed 0 > "$DEST/world_build.log" 2>&1
[ -n "${WARM:-}" ] && [ ! -e "$DEST/warm" ] && cp -r "$WARM" "$DEST/warm"
echo "[seeds-16] world and pi_0 ready after $(( $(date +%s) - start )) s"
set +e
run() {
    [ "$(left)" -gt 30 ] || return 0
    timeout "$(left)" python benchmarks/seeds/run.py --size full --workers "$WORKERS" --out "$DEST" "$@" \
        2>&1 | grep --line-buffered -v -e resource_tracker -e "warnings.warn" | tee -a "$DEST/harness.log"
}
run --only ctl,001,002,003 --settings "control;margin;acquisition;dpo noise=0.4;dpo noise=0.0" --first-seed "$FIRST" --seeds "$SEEDS"
run --only 003 --settings "ipo noise=0.0;slic noise=0.0;simpo noise=0.0" --seeds "$SEEDS"
set -e
uptime | tee "$DEST/load_end.txt"
echo "[seeds-16] total $(( $(date +%s) - start )) s wall" | tee -a "$DEST/harness.log"

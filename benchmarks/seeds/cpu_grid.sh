#!/usr/bin/env bash
# The CPU grid of issue #13 in priority order, resumable, with its cost recorded:
#   bash benchmarks/seeds/cpu_grid.sh OUT [SEEDS]            (default 4 seeds)
# Steps (each a run.py invocation on the same OUT, so a killed script resumes from the records),
# the cheap and the primary claims first (claims.yaml, 11:33: the third grid):
#   1. 000 (active reward modelling + its ceiling; ~20 CPU-s a seed), seeds 0-11
#   2. the positive control and 001's margin comparison   3. 003 with DPO at noise 0.4 (primary)
#   4. 002 (APL)   5. 003 with DPO at noise 0 (primary)   6. 001's budget schedules (secondary)
#   7. 003 with IPO, SLiC, SimPO at noise 0 (secondary)
# The primary claims' seeds 4-7 run on 16 cores (gpu_grid.sh); `run.py --report-only --seeds 8
# --paper-seeds 000=12` over both OUTs' records pools them.
# then one report over every finished run into OUT/results. Two workers, one torch thread each.
# Cost: `uptime` every 60 s into OUT/load.log; /usr/bin/time -v of each step into OUT/time_*.txt
# (user + sys = CPU-seconds of the step, workers included).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: cpu_grid.sh OUT [SEEDS]}
SEEDS=${2:-4}
mkdir -p "$OUT"
# the project's environment ($VENV, default the shared checkout's .venv), checked before anything runs:
# a pool whose workers cannot import torch would respawn them forever
VENV=${VENV:-/work/main/.venv}
[ -f "$VENV/bin/activate" ] && . "$VENV/bin/activate"
python -c "import torch, pyarrow, transformers" || { echo "[cpu-grid] python $(command -v python) lacks torch/pyarrow/transformers: set VENV" >&2; exit 2; }
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 WANDB_MODE=offline
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
( while true; do echo "$(date -u +%H:%M:%S) $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/load.log"; sleep 60; done ) &
LOADER=$!
trap 'kill $LOADER 2>/dev/null' EXIT
step() {  # name, run.py arguments
    local name=$1; shift
    echo "[cpu-grid] $(date -u +%H:%M:%S) step $name: $*" | tee -a "$OUT/steps.log"
    /usr/bin/time -v -o "$OUT/time_$name.txt" python benchmarks/seeds/run.py --seeds "$SEEDS" --workers 2 --out "$OUT" "$@" \
        2>&1 | grep --line-buffered -v -e resource_tracker -e "warnings.warn" | tee -a "$OUT/harness.log"
    echo "[cpu-grid] $(date -u +%H:%M:%S) step $name done: $(grep -E 'User time|System time|Elapsed' "$OUT/time_$name.txt" | tr -s ' ' | tr '\n' ';')" | tee -a "$OUT/steps.log"
}
step 1_000 --only 000 --paper-seeds 000=12
step 2_ctl_001 --only ctl,001 --settings "control;margin"
step 3_003_dpo_noise04 --only 003 --settings "dpo noise=0.4"
step 4_002 --only 002
step 5_003_dpo_noise0 --only 003 --settings "dpo noise=0.0"
step 6_001_schedule --only 001 --settings "schedule"
step 7_003_other --only 003 --settings "ipo noise=0.0;slic noise=0.0;simpo noise=0.0"
python benchmarks/seeds/run.py --seeds "$SEEDS" --paper-seeds 000=12 --out "$OUT" --report-only 2>&1 | grep --line-buffered -v -e resource_tracker -e "warnings.warn" | tail -2

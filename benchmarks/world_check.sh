#!/usr/bin/env bash
# Sanity checks of the world task (iterdpo/toy/world.py); results in benchmarks/world.md.
#   ITERDPO_CACHE=/tmp/wcache bash benchmarks/world_check.sh [OUT_DIR]
# 1. the build (cached after the first call), timed
# 2. the main loop, 2 iterations, gold annotator on the world's gold: win rate vs SFT and length per iteration
# 3. offline DPO (SeRA's iteration 1 = DPO on all of D) on the biased (length_bias 0.3) and clean (0.0) offline sets
set -euo pipefail
OUT=${1:-/tmp/wruns}
PY=${PYTHON:-python}
COMMON="sample.max_tokens=64 evaluate.max_tokens=64 evaluate.num_prompts=100"
/usr/bin/time -f "build wall %e s" $PY -m iterdpo.toy.world --seed 0
$PY -m iterdpo run model.name_or_path=world data.prompts=world data.eval_prompts=world annotate.gold=world \
    run.name=w0 run.output_dir="$OUT" run.iterations=2 $COMMON
for bias in 0.3 0.0; do
  $PY recipes/seraidpo.py --config recipes/configs/toy/seraidpo.yaml model.name_or_path=world data.prompts=world \
      data.eval_prompts=world run.name="offline_bias$bias" run.output_dir="$OUT" run.iterations=1 sera.offline=world \
      sera.offline_size=512 sera.offline_length_bias=$bias sera.ensemble_lambda=0 score.prev_policy=false train.epochs=2 $COMMON
done

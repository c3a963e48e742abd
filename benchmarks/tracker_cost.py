"""Cost of the W&B tracker alone on a finished run directory (offline mode).

    ITERDPO_CACHE=/tmp/tcache python -m iterdpo run run.output_dir=/tmp/lt run.name=w1 \
        run.iterations=1 data.prompts_per_iteration=16 evaluate.num_prompts=16 sample.n=2
    WANDB_MODE=offline python benchmarks/tracker_cost.py /tmp/lt w1
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iterdpo import records  # noqa: E402,F401  (pyarrow.parquet loaded, as in a real run)
from iterdpo.config import load_config  # noqa: E402
from iterdpo.pipeline.context import Run  # noqa: E402
from iterdpo.pipeline.summary import summarize  # noqa: E402
from iterdpo.tracking import make_tracker  # noqa: E402

out, name = sys.argv[1], sys.argv[2]
cfg = load_config(None, [f"run.output_dir={out}", f"run.name={name}", "run.iterations=1", "run.report_to=wandb"])
run = Run(cfg)
shutil.rmtree(run.rd.root / "wandb", ignore_errors=True)
(run.rd.root / "wandb.json").unlink(missing_ok=True)
t0 = time.time()
tracker = make_tracker(run)
t1 = time.time()
tracker.log_iteration(run, 1)
t2 = time.time()
tracker.finish(summarize(run))
t3 = time.time()
print(f"wandb.init {t1 - t0:.1f} s, log_iteration {t2 - t1:.1f} s, finish {t3 - t2:.1f} s")

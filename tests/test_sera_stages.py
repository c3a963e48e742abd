"""SeRA through the loop: iteration-1 rule, offline + bootstrapped pairs, reference reuse, ensemble."""

import json
import math
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from iterdpo.config import ConfigError, load_config

pytestmark = pytest.mark.slow

CFG = """
run: {{name: sera, output_dir: {out}, iterations: 3, seed: 1, reference: previous}}
sample: {{n: 3, temperature: 0.7, top_p: 0.95, batch_size: 8}}
score: {{prev_policy: true}}
select: {{selector: sera}}
train: {{epochs: 1, batch_size: 8}}
evaluate: {{num_prompts: 8}}
sera: {{offline_size: 20, offline_noise: 0.25, bootstrap_prompts: 10, k1_fraction: 0.5, k2_fraction: 0.25, ensemble_lambda: 0.3}}
"""


def test_config_rules():
    with pytest.raises(ConfigError, match="run.reference"):
        load_config(None, ["select.selector=sera"])
    with pytest.raises(ConfigError, match="score.prev_policy"):
        load_config(None, ["select.selector=sera", "run.reference=previous"])
    load_config(None, ["select.selector=sera", "run.reference=previous", "sera.ensemble_lambda=0"])


@pytest.fixture(scope="module")
def sera_run(toy_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("sera")
    (out / "cfg.yaml").write_text(CFG.format(out=out))
    p = subprocess.run([sys.executable, "recipes/seraidpo.py", "--config", str(out / "cfg.yaml")], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    return out / "sera"


def pairs(root, k):
    """The pairs iteration k trained on, with the reference and start log-probs training attached."""
    return pq.read_table(root / f"iter_{k}" / "train" / "pairs.parquet").to_pylist()


def test_iteration_one_trains_on_all_offline_pairs_against_pi0(sera_run):
    offline = pq.read_table(sera_run / "offline" / "pairs.parquet")
    p1 = pairs(sera_run, 1)
    assert len(p1) == offline.num_rows and {p["label_source"] for p in p1} == {"offline"}
    assert {(p["chosen"], p["rejected"]) for p in p1} == set(zip(offline.column("chosen").to_pylist(), offline.column("rejected").to_pylist()))
    # reference = pi_0 = the policy scoring used: stored reference log-probs are the policy's, so DPO starts at log 2
    for p in p1:
        assert p["ref_chosen_logps"] == p["policy_chosen_logps"]
    train = json.loads((sera_run / "iter_1" / "train" / "manifest.json").read_text())["stats"]
    assert math.isclose(train["first_loss"], math.log(2), abs_tol=1e-5)


def test_later_iterations_mix_top_offline_and_bootstrapped_pairs(sera_run):
    size = pq.read_table(sera_run / "offline" / "pairs.parquet").num_rows
    for k in (2, 3):
        p = pairs(sera_run, k)
        offline = [x for x in p if x["label_source"] == "offline"]
        boot = [x for x in p if x["label_source"] == "implicit"]
        assert len(offline) == math.ceil(0.5 * size)
        assert 0 < len(boot) <= min(10, math.ceil(0.25 * size))
        assert all(x["chosen_id"].startswith("offline-") for x in offline)
        assert not any(x["chosen_id"].startswith("offline-") for x in boot)
        scored = {r["completion_id"]: r for r in pq.read_table(sera_run / f"iter_{k}" / "score" / "scored.parquet").to_pylist()}
        lam = 0.0 if k == 2 else 0.3  # one aligned model at iteration 2: no ensemble yet

        def R(cid, scored=scored, lam=lam):
            r = scored[cid]
            return (1 - lam) * r["reward"] + lam * (r["prev_reward"] if lam else 0.0)

        kept = [R(x["chosen_id"]) - R(x["rejected_id"]) for x in offline]
        all_offline = pq.read_table(sera_run / "offline" / "pairs.parquet").to_pylist()
        margins = sorted((R(x["chosen_id"]) - R(x["rejected_id"]) for x in all_offline), reverse=True)
        assert min(kept) >= margins[len(kept) - 1] - 1e-9  # the top k1 by ensemble margin
        assert all(R(x["chosen_id"]) >= R(x["rejected_id"]) for x in boot)  # self-labelled by R
        # reference = pi_{k-1}, the scored policy: reference log-probs are its log-probs
        assert all(x["ref_chosen_logps"] == scored[x["chosen_id"]]["policy_logp"] for x in p)
    assert not math.isnan(scored[offline[0]["chosen_id"]]["prev_reward"])  # pi_1 scored at iteration 3


def test_report_and_wandb_read_every_seraidpo_artifact(sera_run):
    """Issue 12: `iterdpo report` and the W&B table raised KeyError: 'a_id' on SeRA's pairs."""
    from tests.reading import report_and_wandb_read_every_artifact

    assert (sera_run / "iter_2" / "select" / "sera_pairs.parquet").exists()
    assert not (sera_run / "iter_2" / "select" / "candidates.parquet").exists()  # one schema per file name
    report_and_wandb_read_every_artifact(sera_run)


def test_readme_pipeline_example_swaps_seras_select_stage(sera_run, tmp_path):
    """The README's layout example: a SeRA variant in one module, run by the unchanged engine."""
    import re
    import shutil
    from pathlib import Path

    from iterdpo.pipeline.driver import open_run, run_stage

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "SERA_OFFLINE_ONLY" in block)
    module: dict = {}
    exec(compile(code, "README.md", "exec"), module)
    pipeline = module["SERA_OFFLINE_ONLY"]
    root = tmp_path / "sera"
    shutil.copytree(sera_run, root)
    for later in ("select", "annotate"):
        shutil.rmtree(root / "iter_2" / later)
    cfg = load_config(sera_run / "config.yaml", [f"run.output_dir={tmp_path}"])
    m = run_stage(open_run(cfg, pipeline), "annotate", 2)  # its select runs first; SeRA's annotate reads it
    picked = pq.read_table(root / "iter_2" / "select" / "sera_pairs.parquet")
    assert set(picked.column("source").to_pylist()) == {"offline"} and m["stats"]["pairs"] == picked.num_rows
    assert picked.num_rows == math.ceil(0.5 * pq.read_table(root / "offline" / "pairs.parquet").num_rows)

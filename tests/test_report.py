"""The run report: plots from a run directory, and (marked chromium) that the page renders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from iterdpo.records import RecordError
from iterdpo.report import jaccard, margins, write_report
from tests.annotation.conftest import all_pairs, fake_run, make_scored


def _summary(root, n=2):
    its = [{"iteration": k, "gold_win_rate_vs_sft": 0.5 + 0.1 * k, "mean_gold_reward": 0.6 + 0.1 * k,
            "kl_to_reference": 0.5 * k, "mean_implicit_reward": 0.05 * k, "pairs_trained": 10} for k in range(1, n + 1)]
    (root / "summary.json").write_text(json.dumps({"run": "toy", "iterations": its, "baseline_mean_gold_reward": 0.5}))


def test_margins_split_every_in_prompt_pair():
    sc = make_scored(n_prompts=3, n=4)
    pairs = all_pairs(sc)
    sel, passed = margins(sc.to_pylist(), pairs.slice(0, 5).to_pylist(), "reward")
    assert len(sel) == 5 and len(sel) + len(passed) == 3 * 6
    assert all(m >= 0 for m in sel + passed)


def test_jaccard():
    assert jaccard([{1, 2}, {2, 3}, set()]) == [[1.0, 1 / 3, 0.0], [1 / 3, 1.0, 0.0], [0.0, 0.0, 1.0]]


def test_report_writes_page_and_plots(tmp_path):
    root = fake_run(tmp_path, iterations=2)
    _summary(root)
    r = subprocess.run([sys.executable, "-m", "iterdpo", "report", str(root)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    page = (root / "report" / "index.html").read_text()
    for png in ("progress.png", "margins.png", "reward_length.png", "jaccard.png"):
        assert (root / "report" / png).stat().st_size > 5000
        assert f'src="{png}"' in page
    assert "<td>0.6</td>" in page  # the summary table


def test_report_of_an_empty_run(tmp_path):
    (tmp_path / "empty").mkdir()
    page = write_report(tmp_path / "empty").read_text()
    assert "No finished iteration yet" in page
    with pytest.raises(RecordError, match="nope: not a run directory"):
        write_report(tmp_path / "nope")


@pytest.mark.chromium
def test_report_renders_in_headless_chromium(tmp_path):
    """Screenshots the page: a blank or broken page is a near-uniform image."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("chromium is not installed (run .ci/chromium.sh)")
    root = fake_run(tmp_path, iterations=2)
    _summary(root)
    index = write_report(root)
    shot = tmp_path / "shot.png"
    r = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={shot}",
         "--window-size=1200,2400", f"file://{index}"],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.exists(), r.stderr[-2000:]
    from PIL import Image

    img = Image.open(shot).convert("L")
    hist = img.histogram()
    assert max(hist) < 0.97 * sum(hist)  # images drawn, not a blank page
    # the plots are loaded: the page lower down (where the figures are) is not blank either
    lower = img.crop((0, 800, img.width, 1600)).histogram()
    assert max(lower) < 0.97 * sum(lower)

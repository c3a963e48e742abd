"""benchmarks/seeds/verdicts.py: paired verdicts over seeds on synthetic records, and the claims file itself."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[2] / "benchmarks" / "seeds"
sys.path.insert(0, str(HARNESS))
import verdicts  # noqa: E402
from grid import PAPERS, build_grid, reported_rows  # noqa: E402

sys.path.remove(str(HARNESS))


def rows_for(setting_values: dict[tuple[str, str, str, str], list[float]]) -> list[dict]:
    return [{"paper": p, "setting": st, "strategy": s, "metric": m, "seed": seed, "value": v}
            for (p, st, s, m), vals in setting_values.items() for seed, v in enumerate(vals)]


def doc(*claims: dict, controls=()) -> dict:
    return {"alpha": 0.05, "power": 0.8, "claims": list(claims), "controls": list(controls), "sha1": "test"}


def claim(id_: str, better: str, worse: str, direction: str = "higher", effect=None) -> dict:
    c = {"id": id_, "paper": "001", "setting": "margin", "better": better, "worse": worse, "metric": "gain", "direction": direction}
    if effect is not None:
        c["paper_effect"] = effect
    return c


def test_verdicts_reproduced_contradicted_and_undecided():
    rng = random.Random(0)
    seeds = 8
    shared = [rng.gauss(0, 1) for _ in range(seeds)]  # seed effects cancel in a paired test
    vals = {
        ("001", "margin", "good", "gain"): [s + 0.5 + rng.gauss(0, 0.05) for s in shared],
        ("001", "margin", "bad", "gain"): [s + rng.gauss(0, 0.05) for s in shared],
        ("001", "margin", "noisy", "gain"): [s + rng.gauss(0, 1.0) for s in shared],
        ("001", "margin", "flat", "gain"): [s + rng.gauss(0, 0.3) for s in shared],
    }
    out = {c["id"]: c for c in verdicts.judge_claims(rows_for(vals), doc(
        claim("right", "good", "bad"), claim("wrong", "bad", "good"), claim("weak", "noisy", "bad"),
        claim("excluded", "flat", "bad", effect=2.0), claim("small", "good", "bad", effect=2.0), claim("lower", "bad", "good", direction="lower"),
    ))}
    assert out["right"]["verdict"] == "reproduced" and out["right"]["low"] > 0.4
    assert out["wrong"]["verdict"] == "contradicted"
    assert out["weak"]["verdict"] == "undecided (power too low)" and out["weak"]["detectable"] > 0.5
    # no clear gain and an interval far below the paper's 2.0: the paper's effect is ruled out
    assert out["excluded"]["verdict"] == "contradicted" and "excludes" in out["excluded"]["reason"]
    assert out["small"]["verdict"] == "reproduced"  # the ordering holds, if with a smaller effect than claimed
    assert out["lower"]["verdict"] == "reproduced"  # lower is better: bad < good holds
    assert all(c["holm_p"] >= c["p"] for c in out.values())
    assert all(c["n"] == seeds for c in out.values())


def test_unpaired_seeds_are_left_out_and_controls_judged():
    vals = {("001", "margin", "a", "gain"): [1.0, 2.0, 3.0], ("001", "margin", "b", "gain"): [0.0]}
    assert verdicts.judge_claims(rows_for(vals), doc(claim("x", "a", "b"))) == []  # one common seed: no test
    ctl = {"id": "c", "paper": "ctl", "setting": "control", "strategy": "random-oracle", "metric": "gold_reward_gain"}
    good = rows_for({("ctl", "control", "random-oracle", "gold_reward_gain"): [0.10, 0.12, 0.11, 0.09]})
    flat = rows_for({("ctl", "control", "random-oracle", "gold_reward_gain"): [0.10, -0.12, 0.02, -0.01]})
    assert verdicts.judge_controls(good, doc(controls=[ctl]))[0]["passed"]
    assert not verdicts.judge_controls(flat, doc(controls=[ctl]))[0]["passed"]
    md = "\n".join(verdicts.markdown(flat, doc(controls=[ctl])))
    assert "uninformative" in md


def test_claims_file_is_valid_and_names_runs_of_the_grid(tmp_path):
    d = verdicts.load_claims()
    rows = {(s.paper, setting, strategy) for job in build_grid("full", [0], list(PAPERS), "toy")
            for s in job.specs for setting, strategy in reported_rows(s)}
    for c in d["claims"]:
        assert (c["paper"], c["setting"], c["better"]) in rows, c["id"]
        assert (c["paper"], c["setting"], c["worse"]) in rows, c["id"]
    for c in [*d["controls"], *d["gates"]]:
        assert (c["paper"], c["setting"], c["strategy"]) in rows, c["id"]
    assert {c["family"] for c in d["claims"]} == {"primary", "secondary"}
    bad = tmp_path / "claims.yaml"
    bad.write_text("alpha: 0.05\npower: 0.8\ncontrols: []\nclaims:\n  - {id: z, paper: '001', setting: margin, better: a, worse: b, metric: m, direction: up}\n")
    with pytest.raises(ValueError, match=r"claims\[0\] \(z\): direction"):
        verdicts.load_claims(bad)
    bad.write_text("alpha: 0.05\npower: 0.8\ncontrols: []\nclaims:\n  - {id: z, paper: '001', setting: margin, better: a, worse: b, metric: m, direction: higher, colour: red}\n")
    with pytest.raises(ValueError, match="unknown key"):
        verdicts.load_claims(bad)


def test_families_gates_and_dropped_secondary_claims():
    """Holm runs within a family; a failed gate makes its paper's claims not testable; an
    undecided secondary claim is dropped (with its power line)."""
    rng = random.Random(1)
    shared = [rng.gauss(0, 1) for _ in range(6)]
    vals = {
        ("001", "margin", "good", "gain"): [s + 0.5 + rng.gauss(0, 0.05) for s in shared],
        ("001", "margin", "bad", "gain"): [s + rng.gauss(0, 0.05) for s in shared],
        ("001", "margin", "noisy", "gain"): [s + rng.gauss(0, 1.0) for s in shared],
        ("000", "in_prompt", "dopt", "spear"): [0.5 + rng.gauss(0, 0.01) for _ in shared],
        ("000", "in_prompt", "random", "spear"): [0.9 + rng.gauss(0, 0.01) for _ in shared],
        ("000", "ceiling", "all", "spear"): [0.8, 0.9, 0.7, 0.8, 0.85, 0.75],  # the embedding cannot carry gold
    }
    gated = {"id": "000-in-s", "paper": "000", "setting": "in_prompt", "better": "dopt", "worse": "random", "metric": "spear",
             "direction": "lower"}
    d = doc(claim("right", "good", "bad"), {**claim("weak", "noisy", "bad"), "family": "secondary"},
            {**claim("right2", "good", "bad"), "family": "secondary"}, gated)
    d["gates"] = [{"id": "ceil", "paper": "000", "setting": "ceiling", "strategy": "all", "metric": "spear", "below": 0.5, "gates": "000"}]
    out = {c["id"]: c for c in verdicts.judge_claims(rows_for(vals), d)}
    assert out["right"]["verdict"] == "reproduced" and out["right2"]["verdict"] == "reproduced"
    assert out["weak"]["verdict"] == verdicts.DROPPED and "detectable" in out["weak"]["reason"]
    assert out["000-in-s"]["verdict"] == verdicts.NOT_TESTABLE and "ceil" in out["000-in-s"]["reason"]
    # the secondary family's Holm factor is 2 (two secondary claims), the primary's 1 (the gated one is left out)
    assert out["right"]["holm_p"] == pytest.approx(out["right"]["p"])
    assert out["right2"]["holm_p"] == pytest.approx(min(1.0, 2 * out["right2"]["p"]))
    md = "\n".join(verdicts.markdown(rows_for(vals), d))
    assert "not testable" in md and "| ceil |" in md
    vals[("000", "ceiling", "all", "spear")] = [0.3] * 6  # the ceiling passes: 000 is judged
    out = {c["id"]: c for c in verdicts.judge_claims(rows_for(vals), d)}
    assert out["000-in-s"]["verdict"] == "reproduced"

"""Verdicts on pre-registered claims: paired tests over seeds, Holm, power lines, a positive control.

``claims.yaml`` (written before the runs; the report prints its sha1 so a later edit shows)
lists each paper's orderings as ``better > worse`` on one metric within one setting, with
the effect size the paper reports where it gives one. For every claim:

- the runs of ``better`` and ``worse`` pair by seed (same seed = same prompts, same
  sampling and annotation coins: iterdpo derives every random choice from ``run.seed``);
  ``d_s = direction * (better_s - worse_s)``;
- a two-sided paired t-test of ``mean(d) = 0`` and the 95 % interval of ``mean(d)``
  (:func:`iterdpo.stats.paired_interval`); Holm's correction across all claims of the
  report (:func:`iterdpo.stats.holm`);
- a power line: the smallest ``mean(d)`` detectable with 80 % power at the measured SD
  with this many seeds (:func:`iterdpo.stats.detectable_effect`).

Claims come in two families (``family``: primary, secondary), each with its own Holm
correction; a secondary claim that stays undecided is reported as *dropped (cannot be
resolved at this size)* with its power line. ``gates`` (e.g. 000's ceiling run: a reward
model trained on every pair must reach 1 - Spearman < 0.5) mark a paper's claims *not
testable* when the setup cannot carry the comparison.

Verdicts: **reproduced** (Holm-adjusted p <= alpha, in the claimed direction),
**contradicted** (Holm-adjusted p <= alpha against it, or the interval excludes the effect
the paper reports), else **undecided (power too low)**. The positive control (random
selection with oracle labels against the initial policy) must gain more than 2 standard
errors, or the whole grid is reported as uninformative.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from pathlib import Path

import yaml

from iterdpo.stats import detectable_effect, holm, paired_interval

CLAIMS_FILE = Path(__file__).with_name("claims.yaml")
CLAIM_FIELDS = {"id", "paper", "family", "setting", "better", "worse", "metric", "direction", "paper_effect", "paper_says"}
CONTROL_FIELDS = {"id", "paper", "setting", "strategy", "metric"}
GATE_FIELDS = {"id", "paper", "setting", "strategy", "metric", "below", "gates"}
OPTIONAL = {"paper_effect", "paper_says", "family"}
FAMILIES = ("primary", "secondary")
DROPPED = "dropped (cannot be resolved at this size)"
NOT_TESTABLE = "not testable (gate failed)"


def load_claims(path: Path = CLAIMS_FILE) -> dict:
    """The claims document, checked: unknown or missing keys name the claim and the key."""
    doc = yaml.safe_load(path.read_text())
    for key in ("alpha", "power", "claims", "controls"):
        if key not in doc:
            raise ValueError(f"{path}: missing top-level key {key!r}")
    doc.setdefault("gates", [])
    for kind, fields in (("claims", CLAIM_FIELDS), ("controls", CONTROL_FIELDS), ("gates", GATE_FIELDS)):
        for i, c in enumerate(doc[kind]):
            where = f"{path}: {kind}[{i}] ({c.get('id', '?')})"
            if set(c) - fields:
                raise ValueError(f"{where}: unknown key(s) {sorted(set(c) - fields)}; allowed: {sorted(fields)}")
            if fields - set(c) - OPTIONAL:
                raise ValueError(f"{where}: missing key(s) {sorted(fields - set(c) - OPTIONAL)}")
            if kind == "claims" and c["direction"] not in ("higher", "lower"):
                raise ValueError(f"{where}: direction must be 'higher' or 'lower', got {c['direction']!r}")
            if kind == "claims" and c.get("family", "primary") not in FAMILIES:
                raise ValueError(f"{where}: family must be one of {FAMILIES}, got {c['family']!r}")
    doc["sha1"] = hashlib.sha1(path.read_bytes()).hexdigest()[:12]
    return doc


def by_seed(rows: list[dict]) -> dict[tuple, dict[int, float]]:
    """(paper, setting, strategy, metric) -> {seed: value}."""
    out: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in rows:
        out[(r["paper"], r["setting"], r["strategy"], r["metric"])][int(r["seed"])] = float(r["value"])
    return out


def judge_gates(rows: list[dict], doc: dict) -> list[dict]:
    """Each gate: the mean of its run's metric over seeds, and whether it is below the bound."""
    values = by_seed(rows)
    out = []
    for g in doc.get("gates", []):
        xs = list(values.get((g["paper"], g["setting"], g["strategy"], g["metric"]), {}).values())
        mean = sum(xs) / len(xs) if xs else math.nan
        out.append({**g, "n": len(xs), "mean": mean, "passed": bool(xs) and mean < g["below"]})
    return out


def judge_claims(rows: list[dict], doc: dict) -> list[dict]:
    """One dict per claim with data: mean, ci95, p, holm_p, detectable, n, verdict, reason.

    Holm's correction runs within each family (primary, secondary); a claim whose paper's
    gate failed is reported as not testable and left out of its family; an undecided
    secondary claim is reported as dropped (cannot be resolved at this size)."""
    values = by_seed(rows)
    alpha, power = doc["alpha"], doc["power"]
    failed_gates = {g["gates"]: g for g in judge_gates(rows, doc) if not g["passed"]}
    out = []
    for c in doc["claims"]:
        a = values.get((c["paper"], c["setting"], c["better"], c["metric"]), {})
        b = values.get((c["paper"], c["setting"], c["worse"], c["metric"]), {})
        seeds = sorted(set(a) & set(b))
        if len(seeds) < 2:
            continue
        sign = 1.0 if c["direction"] == "higher" else -1.0
        res = paired_interval([sign * a[s] for s in seeds], [sign * b[s] for s in seeds])
        out.append({"family": "primary", **c, "n": res.n, "mean": res.mean, "low": res.low, "high": res.high, "p": res.p_value,
                    "detectable": detectable_effect(res.sd, res.n, alpha=alpha, power=power)})
    for c in out:
        if c["paper"] in failed_gates:
            g = failed_gates[c["paper"]]
            c["holm_p"] = math.nan
            c["verdict"], c["reason"] = NOT_TESTABLE, f"{g['id']}: {g['metric']} {g['mean']:.3g}, needs < {g['below']:g}"
    for family in FAMILIES:
        members = [c for c in out if c["family"] == family and "verdict" not in c]
        for c, adjusted in zip(members, holm([c["p"] for c in members])):
            c["holm_p"] = adjusted
            effect = c.get("paper_effect")
            if adjusted <= alpha and c["mean"] > 0:
                c["verdict"], c["reason"] = "reproduced", f"Holm p {adjusted:.3g}"
            elif adjusted <= alpha:
                c["verdict"], c["reason"] = "contradicted", f"Holm p {adjusted:.3g}, opposite sign"
            elif effect is not None and c["high"] < effect:
                c["verdict"], c["reason"] = "contradicted", f"95 % CI excludes the paper's effect {effect:+g}"
            else:
                why = f"detectable at 80 % power: {c['detectable']:.3g}"
                if effect is not None:
                    why += f" vs the paper's {effect:+g}"
                c["verdict"], c["reason"] = ("undecided (power too low)" if family == "primary" else DROPPED), why
    return out


def judge_controls(rows: list[dict], doc: dict) -> list[dict]:
    """Each positive control: mean gain over seeds, its SE, and whether it exceeds 2 SE."""
    values = by_seed(rows)
    out = []
    for c in doc["controls"]:
        seeds = values.get((c["paper"], c["setting"], c["strategy"], c["metric"]), {})
        xs = list(seeds.values())
        res = paired_interval(xs, [0.0] * len(xs))
        se = res.sd / math.sqrt(res.n) if res.n >= 2 else math.nan
        passed = res.n >= 2 and res.mean > 2 * se
        out.append({**c, "n": res.n, "mean": res.mean, "se": se, "passed": passed})
    return out


def markdown(rows: list[dict], doc: dict) -> list[str]:
    """The verdict section of results.md."""
    controls = judge_controls(rows, doc)
    claims = judge_claims(rows, doc)
    gates = judge_gates(rows, doc)
    tested = defaultdict(int)
    for c in claims:
        if c["verdict"] != NOT_TESTABLE:
            tested[c["family"]] += 1
    lines = [f"Claims file `benchmarks/seeds/claims.yaml` (sha1 {doc['sha1']}, written before the runs); alpha {doc['alpha']} "
             f"with Holm's correction within each family ({tested['primary']} primary, {tested['secondary']} secondary claims tested); "
             f"power lines at {doc['power']:.0%}.", ""]
    if not controls or not all(c["passed"] for c in controls):
        lines += ["**The positive control did not pass: this grid is uninformative** (a setup in which random selection "
                  "with oracle labels cannot beat the initial policy cannot rank selection strategies).", ""]
    lines += ["| control | metric | n | mean gain | SE | > 2 SE |", "|---|---|---|---|---|---|"]
    for c in controls:
        mean, se = ("n/a", "n/a") if c["n"] < 2 else (f"{c['mean']:+.4f}", f"{c['se']:.4f}")
        lines.append(f"| {c['id']} | {c['metric']} | {c['n']} | {mean} | {se} | {'yes' if c['passed'] else '**no**'} |")
    if gates:
        lines += ["", "| gate | run | metric | n | mean | needs | passed |", "|---|---|---|---|---|---|---|"]
        for g in gates:
            lines.append(f"| {g['id']} | {g['paper']} {g['setting']} {g['strategy']} | {g['metric']} | {g['n']} | {g['mean']:.4f} | "
                         f"< {g['below']:g} | {'yes' if g['passed'] else '**no**: claims of ' + g['gates'] + ' not testable'} |")
    lines += ["", "| claim | family | metric | n | mean difference [95 % CI] | p | Holm p | detectable (80 %) | paper | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for c in claims:
        effect = "" if c.get("paper_effect") is None else f"{c['paper_effect']:+g}"
        lines.append(f"| {c['id']}: {c['better']} > {c['worse']} ({c['setting']}) | {c['family']} | {c['metric']} ({c['direction']}) | {c['n']} | "
                     f"{c['mean']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}] | {c['p']:.3g} | {_p(c['holm_p'])} | {c['detectable']:.4f} | "
                     f"{effect} | **{c['verdict']}** ({c['reason']}) |")
    counts = defaultdict(int)
    for c in claims:
        counts[f"{c['family']}: {c['verdict']}"] += 1
    lines += ["", ", ".join(f"{v}: {n}" for v, n in sorted(counts.items())) or "no claim had paired runs on >= 2 seeds", ""]
    return lines


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.3g}"

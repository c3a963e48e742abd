"""Evaluation: the iteration's policy against a baseline on held-out prompts.

Both policies answer every held-out prompt ``evaluate.samples_per_prompt`` times with
their own sampler settings (``evaluate.temperature/top_p/top_k``, never the training
sampler's) and the same sampling seed, so answer j of the policy and answer j of the
baseline to one prompt form a pair (common random numbers); a judge (any
:class:`iterdpo.annotation.Annotator`: gold, a reward model or an LLM judge) compares the
two answers of every pair. Metrics of :func:`compare`:

- ``win_rate`` = (wins + 0.5 * ties) / judged pairs (unlabelled verdicts are left out).
- ``mean_reward`` / ``baseline_mean_reward``: mean score when the judge is a reward model.
- ``mean_gold_reward`` when a gold reward function is known (the toy task).
- ``gold_reward_gain`` (the primary metric when gold is known): the mean over prompts of
  ``g_i = mean_j gold(policy_ij) - mean_j gold(baseline_ij)``, with its paired Student-t
  95 % interval ``gold_reward_gain_ci95``, standard error, p-value of "no gain", and
  ``gold_reward_gain_detectable``: the smallest gain this many prompts detect with 80 %
  power at the measured spread (:mod:`iterdpo.stats`). ``reward_gain`` is the same for a
  reward-model judge. Prompts are the unit: their samples are averaged first, so several
  samples per prompt narrow the interval without pretending they are independent prompts.
- ``mean_length`` / ``baseline_mean_length``: mean response tokens, reported next to the
  reward because a longer answer can buy reward from a length-biased judge.

Given the answers scored by the policy and its training reference (SCORED tables):

- ``kl_to_reference`` = mean over policy samples of ``policy_logp - ref_logp``, a Monte
  Carlo estimate of KL(pi || ref). It is unbiased only when the answers are sampled from
  pi itself (temperature 1, no top-k/top-p); evaluation samples at ``evaluate.temperature``,
  so read it as a trend, not an exact divergence.
- ``mean_implicit_reward`` of the policy's answers, and its Pearson and Spearman
  correlation with response length (a length-exploiting policy has a high one).
- ``implicit_ranking_accuracy``: on the held-out pairs (policy answer, baseline answer)
  the judge labelled, the fraction where the implicit reward orders the pair as the
  judge did (an implicit-reward tie counts 0.5; judge ties are left out).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pyarrow as pa

from iterdpo import records
from iterdpo.stats import detectable_effect, paired_interval


def _finite(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(x) and math.isfinite(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson r = cov(x, y) / (sd(x) sd(y)); NaN with < 2 points or a constant side."""
    xs, ys = _finite(xs, ys)
    n = len(xs)
    if n < 2:
        return math.nan
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return math.nan
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def ranks(xs: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of their ranks."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    out = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for t in range(i, j + 1):
            out[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman rho = Pearson r of the (tie-averaged) ranks."""
    xs, ys = _finite(xs, ys)
    return pearson(ranks(xs), ranks(ys))


def kl_estimate(policy_logp: Sequence[float], ref_logp: Sequence[float]) -> float:
    """mean(log pi(y|x) - log ref(y|x)) over samples y ~ pi (NaN without a reference)."""
    d = [p - r for p, r in zip(policy_logp, ref_logp, strict=True) if math.isfinite(p) and math.isfinite(r)]
    return sum(d) / len(d) if d else math.nan


def ranking_accuracy(reward_a: Sequence[float], reward_b: Sequence[float], labels: Sequence[float | None]) -> float:
    """Share of labelled pairs (label > 0: a preferred) the rewards order the same way.

    Pairs with a None or 0 label are left out; a reward tie scores 0.5. NaN if none left.
    """
    hits, n = 0.0, 0
    for ra, rb, lab in zip(reward_a, reward_b, labels, strict=True):
        if lab is None or lab == 0 or not (math.isfinite(ra) and math.isfinite(rb)):
            continue
        n += 1
        hits += 0.5 if ra == rb else float((ra > rb) == (lab > 0))
    return hits / n if n else math.nan


def _mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else math.nan


def _per_prompt_gain(prompt_ids: Sequence[str], mine: Sequence[float], theirs: Sequence[float]) -> tuple[list[float], list[float]]:
    """Per prompt, the mean of its samples' scores on each side (prompts in first-seen order)."""
    sums: dict[str, list[float]] = {}
    for pid, a, b in zip(prompt_ids, mine, theirs, strict=True):
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            continue
        acc = sums.setdefault(pid, [0.0, 0.0, 0])
        acc[0] += a
        acc[1] += b
        acc[2] += 1
    return [v[0] / v[2] for v in sums.values()], [v[1] / v[2] for v in sums.values()]


def gain(prompt_ids: Sequence[str], mine: Sequence[float], theirs: Sequence[float], name: str) -> dict:
    """``<name>``: paired gain of ``mine`` over ``theirs`` with prompts as the unit, plus its interval fields."""
    per_mine, per_theirs = _per_prompt_gain(prompt_ids, mine, theirs)
    interval = paired_interval(per_mine, per_theirs)
    out = interval.as_dict(name)
    detectable = detectable_effect(interval.sd, interval.n)
    out[f"{name}_detectable"] = None if math.isnan(detectable) else detectable
    return out


def compare(
    policy: pa.Table,
    baseline: pa.Table,
    judge,
    gold: Callable[[str, str], float] | None = None,
    *,
    policy_scored: pa.Table | None = None,
    baseline_scored: pa.Table | None = None,
) -> dict:
    """Metrics of ``policy`` against ``baseline`` (COMPLETIONS tables, one or more answers per prompt).

    Answers pair by ``completion_id`` (``<prompt_id>-<j>``: sample j of a prompt on both
    sides). ``policy_scored`` / ``baseline_scored``: the same answers scored by the policy
    and its reference (SCORED tables), for the KL and implicit-reward metrics.
    """
    base = records.rows_by(baseline, "completion_id")
    mine = [r for r in policy.to_pylist() if r["completion_id"] in base]
    if not mine:
        raise ValueError("policy and baseline answered no common prompt")
    theirs = [base[r["completion_id"]] for r in mine]
    prompts = [r["prompt"] for r in mine]
    prompt_ids = [r["prompt_id"] for r in mine]
    out: dict = {"prompts": len(set(prompt_ids)), "answers": len(mine)}
    if hasattr(judge, "score"):  # a reward model: score each answer once, compare the scores
        sp = judge.score(prompts, [r["completion"] for r in mine])
        sb = judge.score(prompts, [r["completion"] for r in theirs])
        verdicts: list[float | None] = [p - b for p, b in zip(sp, sb, strict=True)]
        out["mean_reward"], out["baseline_mean_reward"] = _mean(sp), _mean(sb)
        out.update(gain(prompt_ids, sp, sb, "reward_gain"))
    else:
        verdicts = judge.compare(prompts, [r["completion"] for r in mine], [r["completion"] for r in theirs])
    scored = [v for v in verdicts if v is not None]
    wins = sum(1.0 if v > 0 else 0.5 if v == 0 else 0.0 for v in scored)
    out.update(
        win_rate=wins / len(scored) if scored else float("nan"),
        judged=len(scored),
        mean_length=sum(r["num_tokens"] for r in mine) / len(mine),
        baseline_mean_length=sum(r["num_tokens"] for r in theirs) / len(theirs),
    )
    if gold is not None:
        gold_mine = [gold(r["prompt"], r["completion"]) for r in mine]
        gold_theirs = [gold(r["prompt"], r["completion"]) for r in theirs]
        out["mean_gold_reward"] = sum(gold_mine) / len(mine)
        out["baseline_mean_gold_reward"] = sum(gold_theirs) / len(theirs)
        out.update(gain(prompt_ids, gold_mine, gold_theirs, "gold_reward_gain"))
    if policy_scored is not None:
        ps = records.rows_by(policy_scored, "completion_id")
        rows = [ps[r["completion_id"]] for r in mine if r["completion_id"] in ps]
        rew = [r["reward"] for r in rows]
        out["kl_to_reference"] = kl_estimate([r["policy_logp"] for r in rows], [r["ref_logp"] for r in rows])
        out["mean_implicit_reward"] = _mean(rew)
        out["implicit_reward_length_pearson"] = pearson(rew, [r["num_tokens"] for r in rows])
        out["implicit_reward_length_spearman"] = spearman(rew, [r["num_tokens"] for r in rows])
        if baseline_scored is not None:
            bs = records.rows_by(baseline_scored, "completion_id")
            keep = [i for i, (m, t) in enumerate(zip(mine, theirs, strict=True)) if m["completion_id"] in ps and t["completion_id"] in bs]
            out["implicit_ranking_accuracy"] = ranking_accuracy(
                [ps[mine[i]["completion_id"]]["reward"] for i in keep],
                [bs[theirs[i]["completion_id"]]["reward"] for i in keep],
                [verdicts[i] for i in keep],
            )
    # JSON has no NaN: store None so manifests stay valid JSON for every reader
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}

"""The harness's grid: which runs reproduce which paper's comparison, at which size.

A :class:`Spec` is one run of one recipe (recipes/*.py ``main(argv)``) with its
``section.key=value`` overrides. Runs of one :class:`Job` execute in order in one worker
process (the active-reward-modelling strategies of a seed share one run directory: its
sampled and embedded responses), every other job holds a single run.

The four comparisons, all at equal annotation budget within a comparison:

- 001 margin selection (Yang et al.): always-smallest / always-random / always-largest
  instance+corpus margin, constant budget; then decrease / constant / increase budget
  schedules of always-smallest (the constant one is shared with the margin comparison).
  Labels: the world's gold reward model (annotate.annotator: reward_model).
- 002 APL (Muldrew et al.): certainty / entropy / hybrid / random acquisition; labels from
  the gold function (the simulated oracle), init reset (the paper's default).
- 003 SeRA (Ko et al.): SeRA / iterative / offline x losses dpo, ipo, slic, simpo x swapped
  offline labels 0, 0.2, 0.4 (on the world, on top of its annotator's length bias). "iterative" = SeRA's loop with no selection and no
  bootstrapping (k1 = |D|, k2 = 0, reference = previous iterate: the paper's iterative DPO);
  "offline" = one training stage on D against the SFT reference with as many epochs as the
  iterative methods have iterations (the same number of passes over D).
- 000 active reward modelling (Shen et al.): eight strategies x in-prompt / cross-prompt pools.
- ctl, the positive control: random selection with oracle labels (verdicts.py: it must beat
  the initial policy by more than 2 standard errors, or the grid is uninformative).
"""

from __future__ import annotations

from dataclasses import dataclass, field

PAPERS = ("000", "001", "002", "003", "ctl")
ARM_STRATEGIES = ("dopt", "pa_dopt", "entropy", "maxdiff", "xtx", "coreset", "batchbald", "random")
ARM_POOLS = ("in_prompt", "cross_prompt")
APL_STRATEGIES = ("certainty", "entropy", "hybrid", "random")
MARGIN_STRATEGIES = ("smallest", "random", "largest")
SCHEDULES = ("decrease", "constant", "increase")
SERA_METHODS = ("sera", "iterative", "offline")
LOSSES = ("dpo", "ipo", "slic", "simpo")
NOISE = (0.0, 0.2, 0.4)

# Per-loss training settings (recipes/configs/toy/seraidpo.yaml's comment; SeRA paper: beta 1.0 for IPO).
LOSS_OVERRIDES = {
    "dpo": ["train.loss=dpo", "train.beta=0.1"],
    "ipo": ["train.loss=ipo", "train.beta=1.0"],
    "slic": ["train.loss=slic", "train.beta=0.1"],
    "simpo": ["train.loss=simpo", "train.beta=2.0", "run.reference=none"],
}

# Sizes. 'full' is sized from measured per-run wall times so 3 seeds of everything fit in
# ~40 minutes on 2 CPU cores (benchmarks/seeds/README.md); 'smoke' is the smallest size
# that still runs every strategy (CI).
SIZES: dict[str, dict] = {
    "full": {
        "eval_prompts": 64, "max_tokens": 48,
        "margin": {"iterations": 3, "prompts": 64, "n": 4, "epochs": 2},
        "apl": {"iterations": 4, "prompts": 48, "fraction": 0.25, "epochs": 4},
        "arm": {"prompts": 128, "n": 6, "rounds": 4, "batch": 32, "test_prompts": 48},
        "sera": {"iterations": 3, "offline_size": 48, "n": 4, "noise": NOISE},
    },
    "smoke": {
        "eval_prompts": 16, "max_tokens": 16,
        "margin": {"iterations": 2, "prompts": 16, "n": 3, "epochs": 1},
        "apl": {"iterations": 2, "prompts": 16, "fraction": 0.25, "epochs": 1},
        "arm": {"prompts": 16, "n": 3, "rounds": 2, "batch": 8, "test_prompts": 8},
        "sera": {"iterations": 2, "offline_size": 16, "n": 2, "noise": (0.2,)},  # every loss and method, one noise level
    },
}

# How each task is reached: the built-in toy task, or the richer world (iterdpo.toy.world).
WORLDS: dict[str, dict[str, list[str]]] = {
    "toy": {
        "common": ["model.name_or_path=toy", "data.prompts=toy", "data.eval_prompts=toy"],
        "rm_labels": ["annotate.annotator=gold"],  # the toy has no reward model: gold stands in
        "oracle_labels": ["annotate.annotator=gold"],
        "offline": ["sera.offline=toy"],
    },
    "world": {
        "common": ["model.name_or_path=world", "data.prompts=world", "data.eval_prompts=world", "annotate.gold=world"],
        # the world's gold reward model labels (its folder filled in by build_grid); evaluation stays on gold
        "rm_labels": ["annotate.annotator=reward_model", "annotate.reward_model={gold_rm}", "evaluate.judge=gold"],
        "oracle_labels": ["annotate.annotator=gold", "evaluate.judge=gold"],
        "offline": ["sera.offline=world"],
    },
}


@dataclass(frozen=True)
class Spec:
    """One run: ``recipe``'s main(["--config", config, *overrides]) -> summary dict."""

    paper: str
    setting: str  # the comparison within a paper (e.g. 'margin', 'schedule', 'dpo noise=0.2')
    strategy: str
    seed: int
    recipe: str  # iterative_dpo | apl | seraidpo | active_rm
    overrides: tuple[str, ...]

    @property
    def run_id(self) -> str:
        """Unique and file-name safe: the record's name."""
        setting = self.setting.replace(" ", "_").replace("=", "")
        return f"{self.paper}-{setting}-{self.strategy}-s{self.seed}"


@dataclass
class Job:
    """Runs executed in order by one worker; ``cost`` orders jobs (longest first)."""

    specs: list[Spec]
    cost: float = field(default=1.0)


def _margin_specs(seed: int, size: dict, world: dict) -> list[Job]:
    m = size["margin"]
    base = [*world["common"], *world["rm_labels"], f"run.iterations={m['iterations']}", f"sample.n={m['n']}",
            f"train.epochs={m['epochs']}", "select.corpus_fraction=0.5"]
    total = m["prompts"] * m["iterations"]
    jobs = []
    for strategy in MARGIN_STRATEGIES:  # constant budget, instance and corpus level alike
        ov = [*base, f"select.instance={strategy}", f"select.corpus={strategy}", f"data.prompts_per_iteration={m['prompts']}"]
        jobs.append(Job([Spec("001", "margin", strategy, seed, "iterative_dpo", tuple(ov))], cost=3))
    for schedule in SCHEDULES:  # always-smallest, the same total of prompts
        if schedule == "constant":  # identical to always-smallest above: reported from that run
            continue
        ov = [*base, "select.instance=smallest", "select.corpus=smallest",
              f"data.prompts_per_iteration={{schedule: {schedule}, total: {total}}}"]
        jobs.append(Job([Spec("001", "schedule", schedule, seed, "iterative_dpo", tuple(ov))], cost=3))
    return jobs


def _apl_specs(seed: int, size: dict, world: dict) -> list[Job]:
    a = size["apl"]
    base = [*world["common"], *world["oracle_labels"], f"run.iterations={a['iterations']}",
            f"data.prompts_per_iteration={a['prompts']}", f"select.corpus_fraction={a['fraction']}", f"train.epochs={a['epochs']}"]
    jobs = []
    for strategy in APL_STRATEGIES:
        # certainty / random: one T=0.7 pair per prompt; entropy / hybrid: 8 samples at T=1 (paper)
        sampling = ["sample.n=2", "sample.temperature=0.7"] if strategy in ("certainty", "random") else ["sample.n=8", "sample.temperature=1.0"]
        ov = [*base, f"select.selector={strategy}", *sampling]
        jobs.append(Job([Spec("002", "acquisition", strategy, seed, "apl", tuple(ov))], cost=3))
    return jobs


def _arm_specs(seed: int, size: dict, world: dict) -> list[Job]:
    a = size["arm"]
    base = [*world["common"], f"data.prompts_per_iteration={a['prompts']}", f"sample.n={a['n']}", f"arm.rounds={a['rounds']}",
            f"arm.batch={a['batch']}", f"arm.test_prompts={a['test_prompts']}"]
    specs = [Spec("000", pool, s, seed, "active_rm", (*base, f"arm.strategy={s}", f"arm.pool={pool}"))
             for pool in ARM_POOLS for s in ARM_STRATEGIES]
    return [Job(specs, cost=12)]


def _sera_specs(seed: int, size: dict, world: dict) -> list[Job]:
    s = size["sera"]
    jobs = []
    for loss in LOSSES:
        for noise in s["noise"]:
            base = [*world["common"], *world["offline"], *LOSS_OVERRIDES[loss], f"sera.offline_size={s['offline_size']}",
                    f"sera.offline_noise={noise}", f"sample.n={s['n']}"]
            if loss != "simpo":
                base.append("run.reference=previous")
            methods = {
                "sera": [f"run.iterations={s['iterations']}", "train.epochs=1"],
                # no selection, no bootstrapping: every offline pair each iteration, reference pi_{t-1}
                "iterative": [f"run.iterations={s['iterations']}", "train.epochs=1", "sera.k1_fraction=1.0", "sera.k2_fraction=0.0",
                              "sera.ensemble_lambda=0.0", "score.prev_policy=false", "sera.bootstrap_prompts=1"],
                # one stage against the SFT reference, as many passes over D as the iterative methods
                "offline": ["run.iterations=1", f"train.epochs={s['iterations']}", "sera.k1_fraction=1.0", "sera.k2_fraction=0.0",
                            "sera.ensemble_lambda=0.0", "score.prev_policy=false"],
            }
            for method, extra in methods.items():
                spec = Spec("003", f"{loss} noise={noise}", method, seed, "seraidpo", tuple([*base, *extra]))
                jobs.append(Job([spec], cost={"sera": 4, "iterative": 3, "offline": 1.5}[method]))
    return jobs


def _control_specs(seed: int, size: dict, world: dict) -> list[Job]:
    """The positive control: random pairs labelled by the oracle (gold), iterative DPO at 001's sizes.

    If this cannot beat the initial policy, no selection strategy can be ranked on the grid.
    """
    m = size["margin"]
    ov = [*world["common"], *world["oracle_labels"], f"run.iterations={m['iterations']}", f"sample.n={m['n']}",
          f"train.epochs={m['epochs']}", "select.corpus_fraction=0.5", "select.instance=random", "select.corpus=random",
          f"data.prompts_per_iteration={m['prompts']}"]
    return [Job([Spec("ctl", "control", "random-oracle", seed, "iterative_dpo", tuple(ov))], cost=3)]


BUILDERS = {"000": _arm_specs, "001": _margin_specs, "002": _apl_specs, "003": _sera_specs, "ctl": _control_specs}


def build_grid(size: str, seeds: list[int], papers: list[str], world: str) -> list[Job]:
    """Every job of the harness, seed by seed, longest first within a seed."""
    sz, w = SIZES[size], WORLDS[world]
    if world == "world":
        from iterdpo.toy.world import world_dir

        gold_rm = str(world_dir(0) / "gold_rm")
        w = {k: [o.replace("{gold_rm}", gold_rm) for o in v] for k, v in w.items()}
    common = [f"evaluate.num_prompts={sz['eval_prompts']}", f"evaluate.max_tokens={sz['max_tokens']}",
              f"sample.max_tokens={sz['max_tokens']}", "run.report_to=none"]
    jobs = []
    for seed in seeds:
        for paper in papers:
            for job in BUILDERS[paper](seed, sz, w):
                job.specs = [Spec(sp.paper, sp.setting, sp.strategy, sp.seed, sp.recipe, (*sp.overrides, *common, f"run.seed={seed}"))
                             for sp in job.specs]
                jobs.append(job)
    # seed-major: a harness stopped early holds whole seeds; within a seed the longest jobs first
    return sorted(jobs, key=lambda j: (j.specs[0].seed, -j.cost))


def reported_rows(spec: Spec) -> list[tuple[str, str]]:
    """(setting, strategy) rows a finished run reports: always-smallest at a constant
    budget also stands for the 'constant' row of the schedule comparison."""
    rows = [(spec.setting, spec.strategy)]
    if spec.paper == "001" and spec.setting == "margin" and spec.strategy == "smallest":
        rows.append(("schedule", "constant"))
    return rows

"""The harness's grid: which runs reproduce which paper's comparison, at which size.

A :class:`Spec` is one run of one recipe (recipes/*.py ``main(argv)``) with its
``section.key=value`` overrides. Runs of one :class:`Job` execute in order in one worker
process (the active-reward-modelling strategies of a seed share one run directory: its
sampled and embedded responses), every other job holds a single run.

The comparisons, all at equal annotation budget within a comparison, one learning rate
(``size["lr"]``, chosen by the positive control) for every strategy of a comparison, and
one evaluation (every held-out prompt x ``eval_samples`` answers, its own sampler):

- 001 margin selection (Yang et al.): always-smallest / always-random / always-largest
  instance+corpus margin, constant budget; then decrease / constant / increase budget
  schedules of always-smallest (the constant one is shared with the margin comparison).
  pi_0 is warm-started by offline DPO (``{pi0}``: run.py builds it once, before the workers)
  and the SFT model is the reference, so pi_0 != reference and iteration 1's margins are
  not all zero (as in the paper). N = 8. Labels: the world's gold reward model.
- 002 APL (Muldrew et al.): certainty / entropy / hybrid / random acquisition; labels from
  the gold function (the simulated oracle), init reset (the paper's default); every
  acquisition samples at the same temperature (entropy / hybrid estimate their entropy
  from 8 samples, certainty / random draw one pair); S / M >= 8.
- 003 SeRA (Ko et al.): SeRA / iterative / offline on |D| = 512 offline pairs, per
  (loss, swapped-label share) setting of ``size["sera"]["settings"]`` (on the world, on top
  of its annotator's length bias). "iterative" = SeRA's loop with no selection and no
  bootstrapping (k1 = |D|, k2 = 0, reference = previous iterate: the paper's iterative DPO);
  "offline" = one training stage on D against the SFT reference with as many epochs as the
  iterative methods have iterations (the same number of passes over D).
- 000 active reward modelling (Shen et al.): eight strategies x in-prompt / cross-prompt
  pools, on an embedding on which the gold reward is learnable (the world: the raw counts its
  gold reward is a function of, iterdpo.toy.world_task.features); a ceiling run (strategy 'all': every in-prompt pair labelled
  in one round) gates the comparison (verdicts.py: its 1 - Spearman must be < 0.5).
- ctl, the positive control: random selection with oracle labels, in 001's setup (verdicts.py:
  it must beat the initial policy by more than 2 standard errors, or the grid is uninformative).
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

# Sizes. 'full' is the grid of benchmarks/seeds/README.md (measured per-run CPU-seconds; the CPU
# grid runs it at 4 seeds, 000 at 12; benchmarks/seeds/gpu_grid.sh at more seeds on 16 cores);
# 'smoke' the smallest size that still runs every strategy (CI).
SIZES: dict[str, dict] = {
    "full": {
        "eval_prompts": 200, "eval_samples": 2, "max_tokens": 48, "lr": 3e-4,
        "warm": {"offline_size": 512, "epochs": 1, "lr": 1e-4},  # pi_0 of 001 / ctl: offline DPO on clean world pairs
        # 256 prompts x 4 epochs: chosen by the control's pilot (claims.yaml, 11:33); 128 x 2 left the control at +0.035
        "margin": {"iterations": 3, "prompts": 256, "n": 8, "epochs": 4},
        "apl": {"iterations": 4, "prompts": 128, "fraction": 0.125, "epochs": 4, "temperature": 0.7},
        "arm": {"prompts": 128, "n": 6, "rounds": 4, "batch": 32, "test_prompts": 48},
        "sera": {"iterations": 3, "offline_size": 512, "n": 4,
                 "settings": (("dpo", 0.0), ("dpo", 0.4), ("ipo", 0.0), ("slic", 0.0), ("simpo", 0.0))},
    },
    "smoke": {
        "eval_prompts": 16, "eval_samples": 1, "max_tokens": 16, "lr": 3e-4,
        "warm": {"offline_size": 16, "epochs": 1, "lr": 1e-4},
        "margin": {"iterations": 2, "prompts": 16, "n": 3, "epochs": 1},
        "apl": {"iterations": 2, "prompts": 16, "fraction": 0.25, "epochs": 1, "temperature": 0.7},
        "arm": {"prompts": 16, "n": 3, "rounds": 2, "batch": 8, "test_prompts": 8},
        # every loss and method, one noise level
        "sera": {"iterations": 2, "offline_size": 16, "n": 2, "settings": tuple((loss, 0.2) for loss in LOSSES)},
    },
}

# How each task is reached: the built-in toy task, or the richer world (iterdpo.toy.world).
WORLDS: dict[str, dict[str, list[str]]] = {
    "toy": {
        "common": ["model.name_or_path=toy", "data.prompts=toy", "data.eval_prompts=toy"],
        "rm_labels": ["annotate.annotator=gold"],  # the toy has no reward model: gold stands in
        "oracle_labels": ["annotate.annotator=gold"],
        "offline": ["sera.offline=toy"],
        "arm_embedding": [],  # the toy's policy states (the toy has no reward model)
        "warm_offline": ["sera.offline=toy"],
    },
    "world": {
        "common": ["model.name_or_path=world", "data.prompts=world", "data.eval_prompts=world", "annotate.gold=world"],
        # the world's gold reward model labels (its folder filled in by build_grid); evaluation stays on gold
        "rm_labels": ["annotate.annotator=reward_model", "annotate.reward_model={gold_rm}", "evaluate.judge=gold"],
        "oracle_labels": ["annotate.annotator=gold", "evaluate.judge=gold"],
        "offline": ["sera.offline=world"],
        # the world's gold features (iterdpo.toy.world_task.features): gold is learnable on them (the ceiling run
        # checks: 1 - Spearman 0.183, seed 0). The gold reward model's last hidden state (arm.embedding=reward_model)
        # was tried first: ceiling 0.702, as the RM's own score only reaches 0.68-0.78 per prompt on SFT samples.
        "arm_embedding": ["arm.embedding=task_features"],
        "warm_offline": ["sera.offline=world", "sera.offline_length_bias=0.0"],  # pi_0's offline DPO: clean gold labels
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


def _lr(size: dict) -> list[str]:
    return [f"train.learning_rate={size['lr']}"]


def _warm_pi0(world: dict) -> list[str]:
    """001 / ctl: pi_0 = the offline-DPO warm start ({pi0}), reference = the task's SFT model."""
    task = "world" if "model.name_or_path=world" in world["common"] else "toy"
    return [*[o for o in world["common"] if not o.startswith("model.name_or_path=")], "model.name_or_path={pi0}",
            f"model.reference={task}", f"annotate.gold={task}"]


def _margin_specs(seed: int, size: dict, world: dict) -> list[Job]:
    m = size["margin"]
    base = [*_warm_pi0(world), *world["rm_labels"], f"run.iterations={m['iterations']}", f"sample.n={m['n']}",
            f"train.epochs={m['epochs']}", "select.corpus_fraction=0.5", *_lr(size)]
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
            f"data.prompts_per_iteration={a['prompts']}", f"select.corpus_fraction={a['fraction']}", f"train.epochs={a['epochs']}",
            f"sample.temperature={a['temperature']}", *_lr(size)]
    jobs = []
    for strategy in APL_STRATEGIES:
        # one sampling temperature for every acquisition (no confound); entropy / hybrid estimate
        # the predictive entropy from 8 samples (paper), certainty / random need one pair
        ov = [*base, f"select.selector={strategy}", "sample.n=2" if strategy in ("certainty", "random") else "sample.n=8"]
        jobs.append(Job([Spec("002", "acquisition", strategy, seed, "apl", tuple(ov))], cost=3))
    return jobs


ARM_CEILING = "all"  # the ceiling run's strategy name: every in-prompt pair of the pool labelled in one round


def _arm_specs(seed: int, size: dict, world: dict) -> list[Job]:
    a = size["arm"]
    base = [*world["common"], *world["arm_embedding"], f"data.prompts_per_iteration={a['prompts']}", f"sample.n={a['n']}",
            f"arm.test_prompts={a['test_prompts']}"]
    rounds = [f"arm.rounds={a['rounds']}", f"arm.batch={a['batch']}"]
    specs = [Spec("000", pool, s, seed, "active_rm", (*base, *rounds, f"arm.strategy={s}", f"arm.pool={pool}"))
             for pool in ARM_POOLS for s in ARM_STRATEGIES]
    # the ceiling: random strategy over the whole in-prompt pool (prompts x n(n-1)/2 pairs), one round
    every = a["prompts"] * a["n"] * (a["n"] - 1) // 2
    specs.append(Spec("000", "ceiling", ARM_CEILING, seed, "active_rm",
                      (*base, "arm.rounds=1", f"arm.batch={every}", "arm.pool_size=null", "arm.strategy=random", "arm.pool=in_prompt")))
    return [Job(specs, cost=12)]


def sera_settings(size: dict) -> list[tuple[str, float]]:
    return list(size["sera"]["settings"])


def _sera_specs(seed: int, size: dict, world: dict) -> list[Job]:
    s = size["sera"]
    jobs = []
    for loss, noise in sera_settings(size):
        base = [*world["common"], *world["offline"], *LOSS_OVERRIDES[loss], f"sera.offline_size={s['offline_size']}",
                f"sera.offline_noise={noise}", f"sample.n={s['n']}", *_lr(size)]
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
    """The positive control: random pairs labelled by the oracle (gold), iterative DPO in 001's
    setup (the same warm-started pi_0, N, budget and learning rate).

    If this cannot beat the initial policy, no selection strategy can be ranked on the grid.
    """
    m = size["margin"]
    ov = [*_warm_pi0(world), *world["oracle_labels"], f"run.iterations={m['iterations']}", f"sample.n={m['n']}",
          f"train.epochs={m['epochs']}", "select.corpus_fraction=0.5", "select.instance=random", "select.corpus=random",
          f"data.prompts_per_iteration={m['prompts']}", *_lr(size)]
    return [Job([Spec("ctl", "control", "random-oracle", seed, "iterative_dpo", tuple(ov))], cost=3)]


def warm_start_argv(size: str, world: str, out_dir: str) -> list[str]:
    """Overrides of the one offline-DPO run (recipes/seraidpo.py loop, one iteration on all
    of D, reference = SFT) whose policy is 001's / the control's pi_0."""
    w, sz = WORLDS[world], SIZES[size]
    c = sz["warm"]
    return [*w["common"], *w["warm_offline"], "train.loss=dpo", "train.beta=0.1", f"train.learning_rate={c['lr']}",
            f"train.epochs={c['epochs']}", f"sera.offline_size={c['offline_size']}", "sera.offline_noise=0.0", "run.iterations=1",
            "run.reference=previous", "sera.k1_fraction=1.0", "sera.k2_fraction=0.0", "sera.ensemble_lambda=0.0",
            "score.prev_policy=false", f"evaluate.num_prompts={sz['eval_prompts']}", f"evaluate.samples_per_prompt={sz['eval_samples']}",
            f"evaluate.max_tokens={sz['max_tokens']}", f"sample.max_tokens={sz['max_tokens']}", "run.report_to=none", "run.seed=0",
            f"run.output_dir={out_dir}", "run.name=warm-pi0"]


WARM_POLICY = "warm-pi0/iter_1/train/model"  # pi_0's folder under the warm start's output dir


BUILDERS = {"000": _arm_specs, "001": _margin_specs, "002": _apl_specs, "003": _sera_specs, "ctl": _control_specs}


def build_grid(size: str, seeds: list[int], papers: list[str], world: str, pi0: str = "{pi0}") -> list[Job]:
    """Every job of the harness, seed by seed, longest first within a seed; ``pi0`` is the
    warm-started initial policy's folder of 001 and the control (run.py builds it)."""
    sz, w = SIZES[size], WORLDS[world]
    gold_rm = "{gold_rm}"
    if world == "world":
        from iterdpo.toy.world import world_dir

        gold_rm = str(world_dir(0) / "gold_rm")
    common = [f"evaluate.num_prompts={sz['eval_prompts']}", f"evaluate.samples_per_prompt={sz['eval_samples']}",
              f"evaluate.max_tokens={sz['max_tokens']}",
              f"sample.max_tokens={sz['max_tokens']}", "run.report_to=none"]
    jobs = []
    for seed in seeds:
        for paper in papers:
            for job in BUILDERS[paper](seed, sz, w):
                job.specs = [Spec(sp.paper, sp.setting, sp.strategy, sp.seed, sp.recipe,
                                  tuple(o.replace("{gold_rm}", gold_rm).replace("{pi0}", pi0) for o in (*sp.overrides, *common, f"run.seed={seed}")))
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

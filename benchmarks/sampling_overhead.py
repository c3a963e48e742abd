"""Where the server pool's time goes: 256 toy requests seeded / unseeded, a max_tokens=1 floor
(pure per-request overhead) and 32 prompts per request. Numbers in benchmarks/sampling.md.

    ITERDPO_CACHE=/tmp/tcache python benchmarks/sampling_overhead.py
"""

import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
if __name__ == "__main__":
    from transformers import AutoTokenizer

    from iterdpo import records
    from iterdpo.config import ModelConfig, SampleConfig
    from iterdpo.logprobs import render_prompt
    from iterdpo.sampling.server import get_pool
    from iterdpo.toy.build import ensure_toy
    toy = ensure_toy()
    m = str(toy / "sft")
    tok = AutoTokenizer.from_pretrained(m)
    P = [render_prompt(tok, r["prompt"], 128) for r in records.load_prompts(toy / "prompts_train.jsonl").slice(0, 256).to_pylist()]
    pool = get_pool(SampleConfig(backend="server", concurrency=64), ModelConfig())
    pool.ensure_model(m)
    def run(name, bodies):
        toks = [0]

        def done(i, r):
            toks[0] += sum(len(c["token_ids"]) for c in r["choices"])

        t = time.perf_counter()
        pool.map(dict(enumerate(bodies)), done)
        dt = time.perf_counter() - t
        print(f"{name}: {len(bodies)} requests {dt:.2f} s {toks[0]} tokens {toks[0]/dt:.0f} tok/s", flush=True)
    base = dict(n=4, temperature=1.0, top_k=50, max_tokens=48, return_token_ids=True)
    run("warm", [dict(base, prompt=p, seed=i) for i, p in enumerate(P[:32])])
    run("A per-prompt seeded", [dict(base, prompt=p, seed=i) for i, p in enumerate(P)])
    run("A2 per-prompt unseeded", [dict(base, prompt=p) for i, p in enumerate(P)])
    run("B floor max_tokens=1 n=1", [dict(prompt=p, max_tokens=1, n=1, return_token_ids=True) for p in P])
    run("C 32 prompts/request", [dict(base, prompt=P[i:i+32]) for i in range(0, 256, 32)])
    pool.shutdown()

"""The fused LM head alone: forward + backward of ``iterdpo.lm_head.fused_token_logps``.

    OMP_NUM_THREADS=1 python benchmarks/lm_head.py [--positions 100,264,400] [--hidden 576] [--vocab 49152]

For each dtype (float32, bfloat16) and number of labelled positions N: process CPU
milliseconds (the best of ``--repeats`` after one warm-up) of one forward + backward (gradients
for the hidden states and the head's weight), with the float32 softmax kept from the forward
(``keep_elements`` large enough) and with the logits recomputed in the backward chunk by chunk
(``keep_elements=0``) at the default chunk and at 4x it. The default shape is SmolLM2-135M's head
(hidden 576, vocabulary 49,152); 264 positions are the mean response tokens of one step of
``benchmarks/training.py``'s 2-pair batches at that shape. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from iterdpo import lm_head


def time_ms(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, repeats: int, **kw) -> float:
    times = []
    for i in range(repeats + 1):
        start = time.process_time()
        token_logp, _ = lm_head.fused_token_logps(hidden, weight, labels, **kw)
        token_logp.sum().backward()
        if i:
            times.append(time.process_time() - start)
        hidden.grad = weight.grad = None
    return round(1e3 * min(times), 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--positions", default="100,264,400", help="comma list of labelled positions N")
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--repeats", type=int, default=4)
    a = p.parse_args()
    torch.manual_seed(0)
    res = {"threads": torch.get_num_threads(), "hidden": a.hidden, "vocab": a.vocab, "ms": {}}
    default_rows = max(1, lm_head.CHUNK_ELEMENTS // a.vocab)
    for dtype in (torch.float32, torch.bfloat16):
        weight = (0.02 * torch.randn(a.vocab, a.hidden)).to(dtype).requires_grad_()
        for n in (int(x) for x in a.positions.split(",")):
            hidden = torch.randn(n, a.hidden).to(dtype).requires_grad_()
            labels = torch.randint(0, a.vocab, (n,))
            res["ms"][f"{str(dtype)[6:]}_N{n}"] = {
                "kept": time_ms(hidden, weight, labels, a.repeats, keep_elements=n * a.vocab),
                f"recomputed_chunk{default_rows}": time_ms(hidden, weight, labels, a.repeats, keep_elements=0),
                f"recomputed_chunk{4 * default_rows}": time_ms(hidden, weight, labels, a.repeats, keep_elements=0,
                                                               chunk_rows=4 * default_rows),
            }
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()

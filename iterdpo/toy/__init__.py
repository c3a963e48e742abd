"""The built-in toy task: a tiny Llama, a BPE tokenizer with a chat template, synthetic
prompts and a programmatic gold reward (see :mod:`iterdpo.toy.task`)."""

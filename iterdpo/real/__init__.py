"""Real models and a real task: SmolLM2-135M-Instruct from its GGUF (:mod:`.gguf`) and the
review-writing task whose gold reward is a sentiment lexicon (:mod:`.reviews`)."""

from iterdpo.errors import UserError


class SetupError(ValueError, UserError):
    """A real model or task that cannot be set up here (a missing package, a bad file); one line, with the fix."""

"""Evaluation helpers (perplexity)."""

from lowbit.eval.perplexity import PerplexityResult, load_text, perplexity

__all__ = ["PerplexityResult", "load_text", "perplexity"]

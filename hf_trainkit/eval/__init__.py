"""Evaluate what training did to a model: pass@k across k, first-answer-token entropy and answer coverage.

`metrics` holds the pure formulas; `sampling` draws and scores completions; `PassAtKCallback`
(`hf_trainkit.callbacks`) runs them during training and `hf-trainkit eval` on saved checkpoints.
"""

from .metrics import coverage, entropy, mean_pass_at_k, pass_at_k, summarize
from .sampling import evaluate


__all__ = ["coverage", "entropy", "evaluate", "mean_pass_at_k", "pass_at_k", "summarize"]

"""Post-hoc monitoring of training runs from trainer_state.json: plots, comparison, summary and diagnosis.

Imports neither torch nor TRL, so it runs on a laptop with only matplotlib.
"""

from .load import MonitorInputError, RunHistory, Series, load_run


__all__ = ["MonitorInputError", "RunHistory", "Series", "load_run"]

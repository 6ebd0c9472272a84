"""A sweep as data: finding runs below a folder, reading their summaries and curves from headers and
logs (never weights), grouping seeds, paired differences, Pareto fronts, run records and the docs'
tables. Pure functions and one cached index; the app only caches and draws them, ``svite runs``
prints them, the experiment scripts write their results tables with them.
"""

from __future__ import annotations

from .curves import Curves, checkpoint_curves
from .export import export_records
from .facts import method_label
from .identity import group_key, outcome_fields
from .index import COLUMNS, RunIndex, index_runs, read_run
from .readers.foreign import run_curves  # every run's curves, ours and those made elsewhere
from .records import read_record
from .stats import (
           beyond_seed_noise,
           default_baselines,
           groups,
           labels,
           paired_differences,
           pareto_front,
           t_interval,
           with_labels,
)
from .tables import results_markdown, runs_document, status_line
from .walk import RECORD_NAME, find_runs

__all__ = ["COLUMNS", "RECORD_NAME", "Curves", "RunIndex", "beyond_seed_noise", "checkpoint_curves", "default_baselines",
           "export_records", "find_runs", "group_key", "groups", "index_runs", "labels", "method_label", "outcome_fields",
           "paired_differences", "pareto_front", "read_record", "read_run", "results_markdown", "run_curves",
           "runs_document", "status_line", "t_interval", "with_labels"]

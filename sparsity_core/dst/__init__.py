"""Dynamic sparse training, as compositions of small parts.

Where prune and grow happen: an engine's ``after_optimizer_step`` (``engine.py``), on the schedule of
``schedule.py``. A method is

* a **unit** (single weights for SViTE, heads and MLP neurons for S2ViTE: ``sparsity_core/models/units.py``),
* a **distribution** of the budget over layers or blocks (``budgets.py``),
* a **schedule**: when to update and how much to change (``schedule.py``),
* **scorers**: which units go and which come (``scorers.py``; S2ViTE's need captured activations,
  ``capture.py``, and shadow weights for inactive neurons, ``neuron_shadow.py``),
* one **selection** rule, an exact top-k with ties to the lower index (``select.py``),
* one **policy** for the optimizer state of grown units (``optim_state.py``).

``unstructured.py`` composes SViTE and its static and one-shot baselines over the weight unit
(``weights.py``: random masks, one layer's prune-and-grow), ``structured.py`` S2ViTE;
every engine checks its exact budgets after every update (``engine.SparsityEngine.assert_budgets``).
Importing this package registers them with :func:`build_engine`.
"""

from . import structured, unstructured  # noqa: F401  (register their methods)
from .engine import ENGINES, EngineContext, SparsityEngine, build_engine, register

__all__ = ["ENGINES", "EngineContext", "SparsityEngine", "build_engine", "register"]

"""Pure analysis functions (checkpoint -> pandas/numpy) that the app draws from.

``masks``: layer densities, mask images and diffs, integrity, FLOPs and speed.
``evolution``: the mask history: densities, churn, fired rate, topology distances, unit survival.
``patches``: token-selector keep maps, keep frequency, captum attributions and their agreement.
"""

from __future__ import annotations

from .evolution import *  # noqa: F401,F403
from .masks import *  # noqa: F401,F403
from .patches import *  # noqa: F401,F403

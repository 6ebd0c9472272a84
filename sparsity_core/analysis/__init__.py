"""Pure analysis functions (checkpoint -> pandas/numpy) that the app draws from.

``masks``: layer densities, mask evolution across snapshots, topology distances, churn, integrity.
``patches``: token-selector keep maps, keep frequency, captum attributions and their agreement.
"""

from __future__ import annotations

from .masks import *  # noqa: F401,F403
from .patches import *  # noqa: F401,F403

"""Pure analysis functions (checkpoint -> pandas/numpy) that the app draws from.

``masks``: layer densities, mask evolution across snapshots, topology distances, churn, integrity.
``patches``: token-selector keep maps, keep frequency, object recall, the selector switched off.
``attribution``: captum attributions and rollout (every patch present), agreement with the kept set,
its chance level and content-blind baselines.
"""

from __future__ import annotations

from .attribution import *  # noqa: F401,F403
from .masks import *  # noqa: F401,F403
from .patches import *  # noqa: F401,F403

"""Pure analysis functions (checkpoint -> pandas/numpy) that the app draws from.

``masks``: layer densities, mask images and diffs, integrity, FLOPs and speed.
``evolution``: the mask history: densities, churn, fired rate, topology distances, unit survival.
``patches``: token-selector keep maps, keep frequency, object recall, the selector switched off.
``attribution``: captum attributions and rollout (every patch present), agreement with the kept set,
its chance level and content-blind baselines.
``heads``: per-head attention and rollout, head importance (the S²ViTE Taylor score), object IoU with
its chance level, and the same head across snapshots (masks; the head probe when recorded).
"""

from __future__ import annotations

from .attribution import *  # noqa: F401,F403
from .evolution import *  # noqa: F401,F403
from .heads import *  # noqa: F401,F403
from .masks import *  # noqa: F401,F403
from .patches import *  # noqa: F401,F403

"""``python -m sparsity_core`` is the ``svite`` command (works under torchrun too)."""

import sys

from .cli import main

sys.exit(main())

"""The error the pages catch: ours (bad input, explained in one line), so pages need not import the core."""

from sparsity_core.errors import SviteError

__all__ = ["SviteError"]

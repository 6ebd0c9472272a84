"""One exception type for bad user input, so every entry point can turn it into one clear line."""

from __future__ import annotations


class SviteError(Exception):
    """A problem with what the user gave us (a file, a flag, a dataset), explained in one line."""


class CheckpointError(SviteError):
    """A checkpoint file that cannot be read; the message names the file and the problem."""


class MethodUnavailable(SviteError):
    """A sparsity method or option that this build does not provide (yet)."""


class FlagError(SviteError):
    """A flag (or a combination of flags) of ``svite train`` that cannot work; ``flag`` names it."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(message)
        self.flag = flag

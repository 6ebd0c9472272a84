"""Errors as values: one exception type for what the user gave us, carrying the sentence for the user, the
file it is about and a detail a page may leave out, so that no caller has to parse a message back.

Raise :class:`SviteError` where the cause is known (``SviteError("is not a checkpoint", path=p,
detail=library_text)``); every entry point turns it into one line (:meth:`SviteError.sentence`): the CLI
prints ``svite CMD: error: <sentence>`` and exits 2, the app shows it with the file's name instead of its
path and without the detail. Any other exception is a bug of ours and is reported as one (the CLI's
"internal error", ``SVITE_DEBUG=1`` for the traceback), never as the user's damaged file.
"""

from __future__ import annotations

import os
from typing import Any


def one_line(err: BaseException | str, limit: int = 300) -> str:
    """Text on one line (whitespace runs collapsed, at most ``limit`` characters): the one helper for
    quoting another library's message or writing a note."""
    text = " ".join(str(err).split())
    if not text and isinstance(err, BaseException):
        text = type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SviteError(Exception):
    """A problem with what the user gave us (a file, a flag, a dataset), explained in one sentence.

    ``message`` is the sentence without the file; ``path`` the file or folder it is about (printed before
    the message, or named by its base name on a page); ``detail`` a library's own words on the fault
    (printed in parentheses by the CLI, left out by the app).
    """

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None, detail: Any = None) -> None:
        self.message = str(message)
        self.path = os.fspath(path) if path is not None else None
        self.detail = one_line(detail) if detail is not None else None
        super().__init__(self.sentence())

    def sentence(self, *, with_detail: bool = True, path_as: str | None = None) -> str:
        """The error on one line: ``<path>: <message> (<detail>)``. ``path_as`` names the file instead of its
        path (the app uses the base name); ``with_detail=False`` leaves the library's words out."""
        where = path_as if path_as is not None else self.path
        text = f"{where}: {self.message}" if where else self.message
        if with_detail and self.detail:
            text += f" ({self.detail})"
        return one_line(text, limit=2000)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its values (a DataLoader worker or a child process hands it back whole)."""
        return _rebuild, (type(self), self.message, self.path, self.detail, dict(self.__dict__))


def _rebuild(cls: type[SviteError], message: str, path: str | None, detail: str | None,
             attrs: dict[str, Any]) -> SviteError:
    err = SviteError.__new__(cls)
    SviteError.__init__(err, message, path=path, detail=detail)
    err.__dict__.update(attrs)
    return err


class CheckpointError(SviteError):
    """A checkpoint file that cannot be read; ``path`` names the file."""


class MethodUnavailable(SviteError):
    """A sparsity method or option that this build does not provide (yet)."""


class FlagError(SviteError):
    """A flag (or a combination of flags) of ``svite train`` that cannot work; ``flag`` names it."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(message)
        self.flag = flag

"""One exception family for everything agatax refuses.

Every error carries a stable ``code`` (an upper-case word that scripts can match on), a message naming
the problem and the files or values at fault, and, where one exists, a ``hint``: the way out (often an
option that relaxes the check).

    try:
        volume = agatax.read_volume(path)
    except agatax.AgataxError as err:
        print(err.code, err)
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["AgataxError", "InputError", "ReadError", "CheckpointError"]


class AgataxError(Exception):
    """Base class of every error agatax raises on purpose.

    Attributes:
        code: stable identifier, e.g. ``"MULTIPLE_SERIES"``, ``"SHAPE_MISMATCH"``.
        message: what is wrong, naming the values or files at fault.
        hint: how to get past it (an option, a package to install), or None.
        paths: files at fault, if any.
    """

    default_code = "AGATAX_ERROR"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        hint: str | None = None,
        paths: Sequence[str] = (),
    ) -> None:
        self.code = code or self.default_code
        self.message = message
        self.hint = hint
        self.paths = tuple(str(p) for p in paths)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"[{self.code}] {self.message}"
        if self.hint:
            text += f" -> {self.hint}"
        return text

    def __reduce__(self):  # keep pickling (multiprocessing) working with keyword-only args
        return (_rebuild, (type(self), self.message, self.code, self.hint, self.paths))


def _rebuild(cls, message, code, hint, paths):
    return cls(message, code=code, hint=hint, paths=paths)


class InputError(AgataxError, ValueError):
    """An array or argument handed to an agatax function is unusable (rank, shape, NaN, spacing...)."""

    default_code = "INVALID_INPUT"


class ReadError(AgataxError, OSError):
    """A file or folder cannot be read as an exam (DICOM, NIfTI, reference tables)."""

    default_code = "READ_ERROR"


class CheckpointError(AgataxError):
    """An ensemble checkpoint is missing, corrupt or does not match the expected configuration."""

    default_code = "BAD_CHECKPOINT"

"""Errors raised while writing, reading and comparing layer-output dumps."""
from __future__ import annotations

from fxquant.errors import FileWriteError, FxQuantError, OutputExistsError

__all__ = ["LayerOutputError", "DumpExistsError", "DumpWriteError", "DumpFormatError",
           "InputInstanceError"]


class LayerOutputError(FxQuantError):
    """Base class of the layer-output errors."""


class DumpExistsError(LayerOutputError, OutputExistsError):
    """The target directory already holds files and ``overwrite`` was not requested."""


class DumpWriteError(LayerOutputError, FileWriteError):
    """A file of a dump could not be written (no space, no permission …).

    ``errno`` and ``filename`` are those of the underlying ``OSError``; the message names the
    path and what to do (see :class:`~fxquant.errors.FileWriteError`).
    """


class DumpFormatError(LayerOutputError, ValueError):
    """A directory is not a readable layer-output dump (the message names the file and field)."""


class InputInstanceError(LayerOutputError, ValueError):
    """An input instance could not be run through the model (wrong shape, dtype, device …).

    The message names the instance (its position in the batch and the instance folder it was to
    fill) and its shapes; the original error is chained as ``__cause__``. The instances before it
    are written.
    """

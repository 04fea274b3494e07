"""Loading pickles without running the code they may carry.

A pickle names callables ("globals") that the loader calls to rebuild objects; a hostile file
names ``os.system`` and runs a command on load. :func:`load_pickle` resolves only the globals an
MMSA feature pickle needs, numpy's array and scalar reconstruction plus builtin containers and
scalars, and refuses any other global before anything is called, naming it. ``trust=True`` is the
explicit opt-out for trusted files that need more (e.g. MMSA-FET's torch tensors).
"""

from __future__ import annotations

import codecs
import collections
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ._types import DataFormatError

try:  # numpy >= 2 moved numpy.core to numpy._core; files carry either name
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

_NUMPY_CORE = {
    ("multiarray", "_reconstruct"): _multiarray._reconstruct,  # ndarray.__reduce__
    ("multiarray", "scalar"): _multiarray.scalar,  # numpy scalars
    ("numeric", "_frombuffer"): _numeric._frombuffer,  # contiguous arrays at protocol 5
}
_BUILTINS = {t.__name__: t for t in (dict, list, tuple, set, frozenset, str, bytes, bytearray,
                                     int, float, complex, bool, slice)}

# (module, name) -> object. ``__builtin__`` is the Python 2 name that protocol 2 files carry
# (the default find_class maps it; an overriding one must do so itself).
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): codecs.encode,  # how protocol 2 stores bytes
    **{(f"{pkg}.{mod}", name): obj for pkg in ("numpy.core", "numpy._core")
       for (mod, name), obj in _NUMPY_CORE.items()},
    **{(mod, name): obj for mod in ("builtins", "__builtin__") for name, obj in _BUILTINS.items()},
}


class UnsafePickleError(DataFormatError):
    """The pickle names a global outside :data:`ALLOWED_GLOBALS` (it could run code)."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        obj = ALLOWED_GLOBALS.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"{self.source}: refused to load the global '{module}.{name}' from this pickle "
                "(loading a pickle calls the globals it names, so it can run code; an MMSA "
                "feature pickle needs only numpy arrays and builtin containers). If you trust "
                "the file, pass --trust-pickle (Python: trust_pickle=True)")
        return obj


def load_pickle(path, *, trust: bool = False) -> Any:
    """The object stored in the pickle at ``path``.

    Args:
        path: the file.
        trust: False (default) resolves only :data:`ALLOWED_GLOBALS`; True unpickles with the
            standard loader, which runs whatever code the file names.
    Raises:
        UnsafePickleError: the file names another global (``trust=False`` only).
        DataFormatError: the file is not a readable pickle (truncated, corrupt, not a pickle).
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            return pickle.load(f) if trust else _RestrictedUnpickler(f, str(path)).load()
        except DataFormatError:
            raise
        # A corrupt stream fails in many ways (UnpicklingError, EOFError, MemoryError from a
        # garbage length, TypeError from an allowed constructor given garbage, ...); with the
        # allowlist no code of the file's choosing ran, so every failure is the file's.
        except Exception as exc:
            raise DataFormatError(f"{path}: not a readable pickle ({type(exc).__name__}: "
                                  f"{exc})") from exc

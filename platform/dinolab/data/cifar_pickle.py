"""CIFAR batch files through a restricted unpickler: only what the format holds is built, and nothing runs.

Each file of the python release of CIFAR-10/100 is a pickle (protocol 2, written by Python 2 and numpy 1) of a
dict: str keys, lists of int labels, lists of str file names, one uint8 array (N, 3072). ``load_cifar_pickle``
resolves only the globals in ``ALLOWED``; any other (``os.system``, ``builtins.eval``, ...) stops the read with
``RefusedPickle`` before it is even imported. numpy itself does not see the file's values while unpickling:
its reconstruction names (``_reconstruct``, ``ndarray``, ``dtype``; ``_frombuffer`` of protocol 5) build
stand-ins that only record their arguments, which become arrays afterwards if the dtype is a plain number
type and the byte count matches the shape (no object arrays, no structured dtypes).
"""

from __future__ import annotations

import codecs
import math
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

# dtype specs as numpy pickles them ("u1", "<i8" has its byte order in the state): booleans and numbers only.
_PLAIN_DTYPE = re.compile(r"[biuf]\d{1,2}")


class RefusedPickle(pickle.UnpicklingError):
    """The file names a global outside ``ALLOWED``, or an array that is not plain numbers; nothing of it ran."""


class _Dtype:
    """``numpy.dtype`` while unpickling: pickled as ``dtype(spec, align, copy)``, then ``__setstate__(state)``."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = True) -> None:
        self.spec, self.state = spec, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def build(self) -> np.dtype:
        spec = getattr(self, "spec", None)
        if not (isinstance(spec, str) and _PLAIN_DTYPE.fullmatch(spec)):
            raise RefusedPickle(f"an array of dtype {spec!r} (only booleans and numbers)")
        dt = np.dtype(spec)
        state = self.state
        if state is None:
            return dt
        # (version, byte order, subarray, names, fields, elsize, alignment, flags[, metadata])
        if not (isinstance(state, tuple) and len(state) >= 5 and state[1] in ("|", "<", ">", "=") and state[2:5] == (None,) * 3):
            raise RefusedPickle(f"a dtype {spec!r} with a subarray, fields or an unknown state")
        return dt.newbyteorder(state[1]) if state[1] in "<>" else dt


class _Array:
    """``numpy.ndarray`` while unpickling: its state is (version, shape, dtype, fortran order, raw bytes)."""

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def build(self) -> np.ndarray:
        if not (isinstance(self.state, tuple) and len(self.state) == 5):
            raise RefusedPickle("an array without its shape, dtype and data")
        _, shape, dtype, fortran, raw = self.state
        return _from_bytes(raw, dtype, shape, "F" if fortran else "C")


_NDARRAY = object()  # numpy.ndarray, as _reconstruct's first argument


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> _Array:
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b"b")``: an empty array; ``__setstate__`` fills it."""
    if subtype is not _NDARRAY:
        raise RefusedPickle("an array of a type other than numpy.ndarray")
    return _Array()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> _Array:
    """``numpy._core.numeric._frombuffer``: how numpy pickles an array with pickle protocol 5."""
    array = _Array()
    array.state = (1, shape, dtype, order == "F", buf)
    return array


def _from_bytes(raw: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    if not isinstance(dtype, _Dtype):
        raise RefusedPickle("an array whose dtype is not a numpy.dtype")
    dt = dtype.build()
    if isinstance(raw, str):  # Python 2's str, read with encoding="latin1"
        raw = raw.encode("latin1")
    if not isinstance(raw, (bytes, bytearray)):
        raise RefusedPickle("an array whose data is not bytes")
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise RefusedPickle(f"an array of shape {shape!r}")
    if len(raw) != math.prod(shape) * dt.itemsize:
        raise RefusedPickle(f"an array of shape {shape} and dtype {dt} with {len(raw)} bytes of data")
    return np.frombuffer(raw, dtype=dt).reshape(shape, order=order)


def _latin1_encode(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode(text, "latin1")``: how Python 3 writes bytes with pickle protocol 2."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise RefusedPickle(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


ALLOWED: dict[tuple[str, str], Any] = {
    **{("builtins", t.__name__): t for t in (dict, list, bytes, str, int)},
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # the original files (numpy 1)
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy 2 renamed numpy.core
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        key = ("builtins" if module == "__builtin__" else module, name)  # Python 2 pickles say __builtin__
        if key not in ALLOWED:
            raise RefusedPickle(f"{module}.{name}")
        return ALLOWED[key]


def _resolve(obj: Any) -> Any:
    """The unpickled value with every stand-in replaced by the numpy object it stands for."""
    if isinstance(obj, (_Array, _Dtype)):
        return obj.build()
    if isinstance(obj, dict):
        return {k: _resolve(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v) for v in obj)
    return obj


def load_cifar_pickle(path: Path) -> Any:
    """The value pickled in ``path`` (Python 2 strings read as latin-1, as torchvision does); ``RefusedPickle``
    if it holds anything outside the CIFAR format."""
    with open(path, "rb") as f:
        return _resolve(_RestrictedUnpickler(f, encoding="latin1").load())

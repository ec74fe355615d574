"""Read CIFAR python batches without running code: a restricted unpickler.

pickle.load runs whatever a file asks for (any importable callable with any arguments). The CIFAR batches
need only dicts, lists, bytes/str, ints and numpy arrays, so find_class admits exactly the few numpy
constructors an array is rebuilt from (plus the latin-1 codec that Python 2 pickles use for bytes);
every other global is refused before anything is called. The caller then checks the CIFAR layout.
"""

import codecs
import io
import pickle

import numpy as np

from .. import PoisonlabError


def _latin1_encode(text, encoding="latin1", *rest):
    if str(encoding).lower().replace("-", "") != "latin1":
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed")
    return codecs.encode(text, "latin1")


def _ndarray_global(name):
    from numpy._core import multiarray, numeric  # numpy >= 2; "numpy.core" names map here
    return {"_reconstruct": multiarray._reconstruct, "_frombuffer": numeric._frombuffer}.get(name)


_ALLOWED = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}
_ARRAY_MODULES = {"numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric"}


class CifarUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]()
        if module in _ARRAY_MODULES and _ndarray_global(name) is not None:
            return _ndarray_global(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays, lists and dicts "
                                     "are allowed in a CIFAR batch")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed in a CIFAR batch")


def load_cifar_batch(path) -> dict:
    """The dict in a CIFAR python batch; a file that asks for anything else is a PoisonlabError."""
    try:
        with open(path, "rb") as fh:
            obj = CifarUnpickler(io.BufferedReader(fh), encoding="bytes").load()
    except Exception as e:  # any malformed stream is the file's fault, reported as such
        raise PoisonlabError(f"cannot read CIFAR batch {path}: {e}") from None
    if not isinstance(obj, dict):
        raise PoisonlabError(f"CIFAR batch {path} holds a {type(obj).__name__}, not a dict")
    return obj

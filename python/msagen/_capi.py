"""ctypes mirror of runtime/msagen.h and the one place the library is found.

The structs below copy msagen.h field for field (enums are int, size_t is
c_size_t); STRUCT_SIZES holds the sizes worked out by hand from the header
for LP64, checked at import so that a header change that was not mirrored
here fails loudly instead of corrupting memory.  tests/t_python.py compares
every offset against a C program compiled from the real header.

The library is loaded on first use, not at import, so that `import msagen`
works (and spec-free helpers stay usable) on a machine without it.
"""

import ctypes
import os
import threading
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char, c_char_p, c_double, c_float,
                    c_int, c_size_t, c_void_p)

from .errors import Error

MSA_MAX_ARCH = 4
MSA_MAX_TUNE_KERNELS = 8
MSA_MAX_TUNE_PARAMS = 8
MSA_MAX_TUNE_VALUES = 16

# enum msa_dtype, by value
DTYPE_NAMES = ("bf16", "fp16", "fp8_e4m3")


class TuneParam(Structure):
    _fields_ = [
        ("name", c_char * 32),
        ("nvalues", c_int),
        ("values", c_int * MSA_MAX_TUNE_VALUES),
    ]


class TuneSpace(Structure):
    _fields_ = [
        ("kernel", c_char * 32),
        ("nparams", c_int),
        ("params", TuneParam * MSA_MAX_TUNE_PARAMS),
    ]


class LayerStruct(Structure):
    _fields_ = [
        ("name", c_char * 64),
        ("file", c_char * 256),
        ("line", c_int),
        ("heads_q", c_int),
        ("heads_kv", c_int),
        ("group", c_int),
        ("head_dim", c_int),
        ("index_heads", c_int),
        ("index_dim", c_int),
        ("block", c_int),
        ("topk", c_int),
        ("local_blocks", c_int),
        ("sink_blocks", c_int),
        ("dtype_q", c_int),
        ("dtype_kv", c_int),
        ("dtype_index", c_int),
        ("dtype_out", c_int),
        ("causal", c_int),
        ("scale", c_double),
        ("narch", c_int),
        ("arch", (c_char * 16) * MSA_MAX_ARCH),
        ("ntune", c_int),
        ("tune", TuneSpace * MSA_MAX_TUNE_KERNELS),
    ]


class SpecStruct(Structure):
    _fields_ = [
        ("path", c_char * 256),
        ("nlayers", c_int),
        ("layers", POINTER(LayerStruct)),
    ]


class CtxOpts(Structure):
    _fields_ = [
        ("cache_dir", c_char_p),
        ("no_disk_cache", c_int),
        ("arch", c_char_p),
        ("device", c_int),
        ("verbose", c_int),
    ]


class BuildStats(Structure):
    _fields_ = [
        ("variants", c_int),
        ("compiled", c_int),
        ("disk_hits", c_int),
        ("failed", c_int),
        ("seconds", c_double),
    ]


class Batch(Structure):
    _fields_ = [
        ("batch", c_int),
        ("cu_q", POINTER(c_int)),
        ("cu_kv", POINTER(c_int)),
        ("page_table", POINTER(c_int)),
        ("pages_per_req", c_int),
        ("num_pages", c_int),
        ("scale_q", c_float),
        ("scale_k", c_float),
        ("scale_v", c_float),
        ("scale_qi", c_float),
        ("scale_ki", c_float),
        ("nsplit", c_int),
        ("sparse_mode", c_int),
        ("kvo_workspace", c_size_t),
    ]


# C name -> mirror, for the layout test.
STRUCTS = (
    ("msa_tune_param", TuneParam),
    ("msa_tune_space", TuneSpace),
    ("msa_layer", LayerStruct),
    ("msa_spec", SpecStruct),
    ("msa_ctx_opts", CtxOpts),
    ("msa_build_stats", BuildStats),
    ("msa_batch", Batch),
)

# sizeof() of each struct on LP64 (x86_64, aarch64), from the header:
#   msa_tune_param  32 + 4 + 16*4                              = 100
#   msa_tune_space  32 + 4 + 8*100                             = 836
#   msa_layer       64 + 256 + 11 ints + 4 enums + causal      = 384,
#                   scale @384, narch @392, arch @396 (64 B), ntune @460,
#                   tune @464 (8*836 = 6688)                   = 7152
#   msa_spec        256 + nlayers + pad, layers @264           = 272
#   msa_ctx_opts    ptr, int+pad, ptr, int, int                = 32
#   msa_build_stats 4 ints, double                             = 24
#   msa_batch       int+pad, 3 ptrs @8..31, 2 ints, 5 floats, 2 ints @60..67,
#                   pad, size_t @72                            = 80
STRUCT_SIZES = {
    "msa_tune_param": 100, "msa_tune_space": 836, "msa_layer": 7152, "msa_spec": 272,
    "msa_ctx_opts": 32, "msa_build_stats": 24, "msa_batch": 80,
}


def _check_sizes():
    """Refuse to run with a mirror that disagrees with the header."""
    if ctypes.sizeof(c_void_p) != 8:
        return  # the hand-computed sizes are LP64's; the test still checks offsets
    for cname, cls in STRUCTS:
        if ctypes.sizeof(cls) != STRUCT_SIZES[cname]:
            raise ImportError("msagen: ctypes mirror of %s is %d bytes, msagen.h says %d"
                              % (cname, ctypes.sizeof(cls), STRUCT_SIZES[cname]))


_check_sizes()

# void (*msa_progress_fn)(void *arg, int done, int total, const char *line)
PROGRESS_FN = CFUNCTYPE(None, c_void_p, c_int, c_int, c_char_p)

_P = c_void_p
# name: (restype, argtypes).  Device pointers and handles are all void *.
_PROTOS = {
    "msa_status_name": (c_char_p, [c_int]),
    "msa_dtype_name": (c_char_p, [c_int]),
    "msa_dtype_size": (c_size_t, [c_int]),
    "msa_spec_load": (c_int, [c_char_p, POINTER(POINTER(SpecStruct)), c_char_p, c_size_t]),
    "msa_spec_load_string": (c_int, [c_char_p, c_char_p, c_size_t, POINTER(POINTER(SpecStruct)),
                                     c_char_p, c_size_t]),
    "msa_spec_free": (None, [POINTER(SpecStruct)]),
    "msa_ctx_new": (c_int, [POINTER(CtxOpts), POINTER(_P)]),
    "msa_ctx_free": (None, [_P]),
    "msa_ctx_error": (c_char_p, [_P]),
    "msa_ctx_cache_dir": (c_char_p, [_P]),
    "msa_build": (c_int, [_P, POINTER(SpecStruct), c_char_p, c_int, PROGRESS_FN, _P,
                          POINTER(BuildStats)]),
    "msa_module_new": (c_int, [_P, POINTER(LayerStruct), POINTER(_P)]),
    "msa_module_free": (None, [_P]),
    "msa_dense_plan_new": (c_int, [_P, c_int, POINTER(c_int), POINTER(c_int), c_int, POINTER(_P)]),
    "msa_dense_run": (c_int, [_P] * 7),
    "msa_dense_plan_free": (None, [_P]),
    "msa_plan_new": (c_int, [_P, POINTER(Batch), POINTER(_P)]),
    "msa_plan_free": (None, [_P]),
    "msa_plan_nb_max": (c_int, [_P]),
    "msa_plan_nsplit": (c_int, [_P]),
    "msa_index_scores": (c_int, [_P] * 5),
    "msa_topk": (c_int, [_P] * 4),
    "msa_index_topk": (c_int, [_P] * 5),
    "msa_sparse_attn": (c_int, [_P] * 8),
    "msa_attention": (c_int, [_P] * 9),
    "msa_dense": (c_int, [_P] * 7),
}

_lock = threading.Lock()
_lib = None
_lib_path = None


def candidates():
    """Where the library may be, in order, as (label, path).

    $MSAGEN_LIB wins outright (a wrong value is an error, not a fallback);
    then the copy pip puts in the package; then the build tree, for imports
    straight from <repo>/python.
    """
    env = os.environ.get("MSAGEN_LIB")
    if env:
        return [("$MSAGEN_LIB", env)]
    here = os.path.dirname(os.path.abspath(__file__))
    return [
        ("package", os.path.join(here, "_lib", "libmsagen.so")),
        ("source tree", os.path.normpath(os.path.join(here, "..", "..", "build", "libmsagen.so"))),
    ]


def _open(path):
    lib = ctypes.CDLL(path)
    for name, (res, args) in _PROTOS.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args
    return lib


def lib():
    """The loaded library; the first call finds and loads it."""
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        searched = []
        for label, path in candidates():
            if not os.path.exists(path):
                searched.append("%s (%s): not found" % (path, label))
                continue
            try:
                loaded = _open(path)
            except (OSError, AttributeError) as e:
                raise Error("cannot load %s (%s): %s" % (path, label, e), None) from None
            _lib_path = path
            _lib = loaded
            return _lib
        raise Error("libmsagen.so not found; searched: %s.  Build it with `make` in the "
                    "repository, install the package with `pip install .`, or set "
                    "MSAGEN_LIB to its path" % "; ".join(searched), None)


def lib_path():
    """Path of the loaded library (loads it if needed)."""
    lib()
    return _lib_path


def text(b):
    """C string from the library -> str, never failing on odd bytes."""
    return b.decode("utf-8", "replace") if b else ""


def status_words(rc):
    return text(lib().msa_status_name(rc))

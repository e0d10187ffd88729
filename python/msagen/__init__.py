"""msagen: MiniMax Sparse Attention and dense attention kernels, generated
from a Lua spec, JIT-compiled with NVRTC and cached, driven from PyTorch.

    import msagen
    spec = msagen.load_spec("specs/minimax-m3.lua")   # no GPU, no torch
    msagen.build(spec, arch="sm_90a")                  # fill the disk cache (no GPU)
    layer = msagen.load(spec, layer="minimax-m3")      # torch + GPU from here on
    plan = layer.plan(cu_q, cu_kv)                     # once per batch, outside graphs
    out, lse = plan.attention(qi, ki, q, k, v)         # launches only

Importing needs neither torch nor the C library: the library
(libmsagen.so) is found at first use, from $MSAGEN_LIB, else the copy
installed in the package (msagen/_lib/), else <repo>/build/ when imported
from the source tree; failing that, msagen.Error lists what was searched.
torch is imported by load() only.  Every failure is a msagen.Error.
"""

from ._capi import lib_path
from .errors import Error
from .layer import AtLeast, DensePlan, Layer, Plan, load
from .spec import ARCHS, Context, LayerSpec, Spec, build, load_spec

__version__ = "0.1.0"  # MSAGEN_VERSION in msagen.h

__all__ = ["ARCHS", "AtLeast", "Context", "DensePlan", "Error", "Layer", "LayerSpec", "Plan",
           "Spec", "build", "lib_path", "load", "load_spec", "__version__"]

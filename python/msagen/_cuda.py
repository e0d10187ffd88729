"""torch, imported only when a GPU entry point needs it, and the CUDA
context the library must find current.

The library launches through the driver API on whatever context is current
on the calling thread (retaining the primary one when none is).  torch uses
the primary context too, but a thread torch has not yet touched has no
current context, and a thread whose torch device differs has the wrong one:
`on_device` fixes both before each call, without leaving the caller's torch
device changed.
"""

import contextlib
import ctypes
import threading
from ctypes import byref, c_int, c_void_p

from .errors import MSA_ECUDA, MSA_EINVAL, MSA_ENODEV, Error

_torch = None


def torch():
    """The torch module, or a msagen.Error saying it is needed."""
    global _torch
    if _torch is None:
        try:
            import torch as t
        except ImportError as e:
            raise Error("this msagen call needs PyTorch (import torch failed: %s)" % e,
                        MSA_ENODEV) from None
        _torch = t
    return _torch


def device_index(device):
    """None (torch's current device), an int, "cuda[:N]" or a torch.device
    -> a CUDA ordinal, initialising torch's CUDA state on the way."""
    t = torch()
    if not t.cuda.is_available():
        raise Error("no CUDA device available to torch (torch.cuda.is_available() is False)",
                    MSA_ENODEV)
    t.cuda.init()
    if device is None:
        return t.cuda.current_device()
    if isinstance(device, int):
        idx = device
    else:
        d = t.device(device)
        if d.type != "cuda":
            raise Error("device: expected a CUDA device, got %s" % d, MSA_EINVAL)
        idx = t.cuda.current_device() if d.index is None else d.index
    if not 0 <= idx < t.cuda.device_count():
        raise Error("device: cuda:%d does not exist (%d CUDA devices)"
                    % (idx, t.cuda.device_count()), MSA_EINVAL)
    return idx


_drv = None
_drv_lock = threading.Lock()
_primary = {}


def _driver():
    global _drv
    with _drv_lock:
        if _drv is None:
            try:
                d = ctypes.CDLL("libcuda.so.1")
            except OSError as e:
                raise Error("cannot load the CUDA driver (libcuda.so.1): %s" % e,
                            MSA_ENODEV) from None
            for name in ("cuCtxGetCurrent", "cuCtxGetDevice", "cuCtxSetCurrent", "cuDeviceGet",
                         "cuDevicePrimaryCtxRetain"):
                getattr(d, name).restype = c_int
            _drv = d
    return _drv


def _make_current(idx):
    """Ensure a context of device idx is current on this thread: the
    primary one (torch's) unless one of that device already is."""
    d = _driver()
    cur, dev = c_void_p(), c_int(-1)
    if d.cuCtxGetCurrent(byref(cur)) == 0 and cur.value:
        if d.cuCtxGetDevice(byref(dev)) == 0 and dev.value == idx:
            return
    ctx = _primary.get(idx)
    if ctx is None:
        cudev, ctx = c_int(), c_void_p()
        if d.cuDeviceGet(byref(cudev), c_int(idx)) or \
                d.cuDevicePrimaryCtxRetain(byref(ctx), cudev):
            raise Error("cannot retain the primary CUDA context of cuda:%d" % idx, MSA_ECUDA)
        _primary[idx] = ctx  # retained for the process, like torch does
    if d.cuCtxSetCurrent(ctx):
        raise Error("cuCtxSetCurrent failed for cuda:%d" % idx, MSA_ECUDA)


@contextlib.contextmanager
def on_device(idx):
    """torch's device idx (restored afterwards) and its context current."""
    t = torch()
    if t.cuda.current_device() == idx:
        _make_current(idx)
        yield
        return
    with t.cuda.device(idx):
        _make_current(idx)
        yield

"""Specs, contexts and `build`: everything that needs no GPU and no torch.

A Spec copies its layers out of the C spec and frees the C object at once,
so Python specs need no closing; `build` hands the C library a msa_spec
assembled over those copies.
"""

import ctypes
import os
import sys
from ctypes import byref, c_void_p

from . import _capi
from .errors import MSA_EINVAL, Error

ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90a")

_INT_FIELDS = ("line", "heads_q", "heads_kv", "group", "head_dim", "index_heads", "index_dim",
               "block", "topk", "local_blocks", "sink_blocks")
_DTYPE_FIELDS = ("dtype_q", "dtype_kv", "dtype_index", "dtype_out")


def _int_prop(field):
    return property(lambda self: getattr(self._c, field), doc="msa_layer.%s" % field)


def _dtype_prop(field):
    def get(self):
        v = getattr(self._c, field)
        return _capi.DTYPE_NAMES[v] if 0 <= v < len(_capi.DTYPE_NAMES) else "dtype%d" % v
    return property(get, doc="msa_layer.%s as its spec name" % field)


class Closing:
    """`with` blocks and garbage collection both end in close(); a close()
    that fails while the interpreter shuts down is not worth a traceback."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class LayerSpec:
    """One checked layer of a spec: read-only attributes mirroring msa_layer
    (heads_q, heads_kv, group, head_dim, index_heads, index_dim, block, topk,
    local_blocks, sink_blocks, dtype_q/kv/index/out as "bf16"/"fp16"/
    "fp8_e4m3", causal, scale, arch, tune, and where it was declared: file,
    line).  Holds its own copy of the C struct, so it outlives its Spec."""

    __slots__ = ("_c",)

    def __init__(self, cstruct):
        self._c = _capi.LayerStruct.from_buffer_copy(cstruct)

    name = property(lambda self: _capi.text(self._c.name))
    file = property(lambda self: _capi.text(self._c.file))
    causal = property(lambda self: bool(self._c.causal))
    scale = property(lambda self: self._c.scale)

    @property
    def arch(self):
        return [_capi.text(self._c.arch[i].value) for i in range(self._c.narch)]

    @property
    def tune(self):
        """{kernel: {param: [values]}} as the spec's tune table gave it."""
        out = {}
        for t in self._c.tune[:self._c.ntune]:
            out[_capi.text(t.kernel)] = {
                _capi.text(p.name): list(p.values[:p.nvalues]) for p in t.params[:t.nparams]}
        return out

    def to_dict(self):
        keys = ("name", "file") + _INT_FIELDS + _DTYPE_FIELDS + ("causal", "scale", "arch", "tune")
        return {k: getattr(self, k) for k in keys}

    def __eq__(self, other):
        return isinstance(other, LayerSpec) and bytes(self._c) == bytes(other._c)

    def __hash__(self):
        return hash(bytes(self._c))

    def __repr__(self):
        dts = {self.dtype_q, self.dtype_kv, self.dtype_index, self.dtype_out}
        dt = self.dtype_q if len(dts) == 1 else "q=%s kv=%s index=%s out=%s" % (
            self.dtype_q, self.dtype_kv, self.dtype_index, self.dtype_out)
        return ("LayerSpec(%r, heads q=%d kv=%d, D=%d, Di=%d, block=%d, topk=%d, local=%d, "
                "sink=%d, %s, %s)" % (self.name, self.heads_q, self.heads_kv, self.head_dim,
                                      self.index_dim, self.block, self.topk, self.local_blocks,
                                      self.sink_blocks, dt,
                                      "causal" if self.causal else "non-causal"))


for _f in _INT_FIELDS:
    setattr(LayerSpec, _f, _int_prop(_f))
for _f in _DTYPE_FIELDS:
    setattr(LayerSpec, _f, _dtype_prop(_f))
del _f


class Spec:
    """The layers of one spec, in declaration order; index by position or
    layer name."""

    def __init__(self, path, layers):
        self.path = path
        self.layers = tuple(layers)

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, key):
        if isinstance(key, str):
            for layer in self.layers:
                if layer.name == key:
                    return layer
            raise Error("spec %s has no layer %r (layers: %s)"
                        % (self.path, key, ", ".join(self.names)), MSA_EINVAL)
        try:
            return self.layers[key]
        except IndexError:
            raise Error("spec %s has %d layers; no layer %r" % (self.path, len(self), key),
                        MSA_EINVAL) from None

    @property
    def names(self):
        return [layer.name for layer in self.layers]

    def _as_c(self):
        """A msa_spec over copies of the layers; keep the result alive
        while C uses it (the array hangs off it)."""
        arr = (_capi.LayerStruct * len(self.layers))(*[layer._c for layer in self.layers])
        c = _capi.SpecStruct(nlayers=len(self.layers),
                             layers=ctypes.cast(arr, ctypes.POINTER(_capi.LayerStruct)))
        c.path = os.fsencode(self.path)[:255]
        c._keep = arr
        return c

    def __repr__(self):
        return "Spec(%r, [%s])" % (self.path, ", ".join(repr(x) for x in self.layers))


def _looks_like_lua(s):
    """The rule for a str argument: an existing path is a path; otherwise a
    text that mentions `layer` and has a newline or a brace is Lua source."""
    if os.path.exists(s):
        return False
    return "layer" in s and ("\n" in s or "{" in s)


def _from_c(cspec_p):
    c = cspec_p.contents
    layers = [LayerSpec(c.layers[i]) for i in range(c.nlayers)]
    return Spec(_capi.text(c.path), layers)


def load_spec(source=None, *, lua=None, name=None):
    """Load and check a spec: `load_spec("specs/tiny.lua")`, or Lua source
    as `load_spec(lua=text, name="x.lua")`.  A plain str that is not an
    existing file but contains "layer" and a newline or "{" is taken as
    Lua source too.  `name` is the chunk name in error messages (default
    "<string>"), which read "x.lua:3: heads.q = 48 is not a multiple of
    heads.kv = 5".  Raises msagen.Error (status MSA_ESPEC, or MSA_EIO for an
    unreadable file)."""
    if lua is not None and source is not None:
        raise Error("load_spec: give a path or lua=, not both", MSA_EINVAL)
    if lua is None:
        if source is None:
            raise Error("load_spec: no spec given", MSA_EINVAL)
        if isinstance(source, bytes):
            source = os.fsdecode(source)
        if not isinstance(source, (str, os.PathLike)):
            raise Error("load_spec: expected a path or Lua source, got %s"
                        % type(source).__name__, MSA_EINVAL)
        if isinstance(source, str) and _looks_like_lua(source):
            lua = source
    lib = _capi.lib()
    err = ctypes.create_string_buffer(8192)
    out = ctypes.POINTER(_capi.SpecStruct)()
    if lua is not None:
        text = lua.encode("utf-8") if isinstance(lua, str) else bytes(lua)
        chunk = (name or "<string>").encode("utf-8")
        rc = lib.msa_spec_load_string(chunk, text, len(text), byref(out), err, len(err))
    else:
        rc = lib.msa_spec_load(os.fsencode(source), byref(out), err, len(err))
    if rc:
        raise Error(_capi.text(err.value) or "spec load failed", rc)
    try:
        return _from_c(out)
    finally:
        lib.msa_spec_free(out)


def as_spec(spec):
    """Spec, LayerSpec (a one-layer spec), or anything load_spec takes."""
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, LayerSpec):
        return Spec(spec.file, [spec])
    return load_spec(spec)


class Context(Closing):
    """An msa_ctx: the memory cache of loaded kernels and the disk cache
    directory.  Freed by close() (or when collected)."""

    def __init__(self, cache_dir=None, device=0, arch=None, verbose=False):
        if arch is not None and arch not in ARCHS:
            raise Error("unknown arch %r (%s)" % (arch, ", ".join(ARCHS)), MSA_EINVAL)
        self.handle = None
        lib = _capi.lib()
        self._cache_dir_b = os.fsencode(cache_dir) if cache_dir is not None else None
        self._arch_b = arch.encode() if arch else None
        opts = _capi.CtxOpts(cache_dir=self._cache_dir_b, no_disk_cache=0, arch=self._arch_b,
                             device=int(device), verbose=int(bool(verbose)))
        self.handle = c_void_p()
        rc = lib.msa_ctx_new(byref(opts), byref(self.handle))
        if rc:
            raise Error("msa_ctx_new failed (%s)" % _capi.status_words(rc), rc)

    @property
    def cache_dir(self):
        return os.fsdecode(_capi.lib().msa_ctx_cache_dir(self.handle) or b"")

    def error(self, rc, what):
        """An Error carrying the context's last message."""
        msg = _capi.text(_capi.lib().msa_ctx_error(self.handle)) if self.handle else ""
        return Error(msg or "%s failed (%s)" % (what, _capi.status_words(rc)), rc)

    def close(self):
        h, self.handle = self.handle, None
        if h:
            _capi.lib().msa_ctx_free(h)


def _progress_printer(done, total, line):
    sys.stderr.write("[%d/%d] %s\n" % (done, total, line))


def _progress_callback(progress, raised):
    """Wrap a Python progress function for C worker threads: exceptions
    cannot cross C, so the first is kept for build() to re-raise."""
    fn = _progress_printer if progress is True else progress

    def cb(_arg, done, total, line):
        if raised:
            return
        try:
            fn(done, total, _capi.text(line))
        except BaseException as e:  # noqa: B902 - re-raised after msa_build returns
            raised.append(e)
    return _capi.PROGRESS_FN(cb)


def build(spec, arch=None, jobs=0, cache_dir=None, progress=None):
    """Compile every kernel variant of a spec into the disk cache (NVRTC, no
    GPU needed), like `msagen build`.  spec: a Spec, a LayerSpec, a path or
    Lua source.  arch: one of ARCHS, or None for each layer's own list.
    jobs: compile threads (0: one per core).  cache_dir: None means the
    CLI's default ($MSAGEN_CACHE_DIR, $XDG_CACHE_HOME/msagen, ~/.cache/msagen).
    progress: None, True (print to stderr) or f(done, total, line), called
    from worker threads.  Returns {variants, compiled, disk_hits, failed,
    seconds, cache_dir}; raises msagen.Error (with .stats) if any variant
    failed."""
    spec = as_spec(spec)
    if arch is not None and arch not in ARCHS:
        raise Error("unknown arch %r (%s)" % (arch, ", ".join(ARCHS)), MSA_EINVAL)
    cspec = spec._as_c()
    raised = []
    cb = _progress_callback(progress, raised) if progress else ctypes.cast(None, _capi.PROGRESS_FN)
    stats = _capi.BuildStats()
    with Context(cache_dir=cache_dir) as ctx:
        rc = _capi.lib().msa_build(ctx.handle, byref(cspec), arch.encode() if arch else None,
                                   int(jobs), cb, None, byref(stats))
        result = {"variants": stats.variants, "compiled": stats.compiled,
                  "disk_hits": stats.disk_hits, "failed": stats.failed,
                  "seconds": stats.seconds, "cache_dir": ctx.cache_dir}
        err = ctx.error(rc, "msa_build") if rc else None
    if err is not None:
        err.stats = result
        raise err
    if raised:
        raise raised[0]
    return result

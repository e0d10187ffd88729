"""A layer's kernels on one GPU, driven with torch tensors.

    layer = msagen.load("specs/minimax-m3.lua")          # JIT or cache load
    plan = layer.plan(cu_q, cu_kv)                        # host work, once per batch
    out, lse = plan.attention(qi, ki, q, k, v)            # launches only

plan() allocates device memory and copies lengths and the page table with
synchronous copies, so it must run outside CUDA-graph capture; the run calls
(index_scores, topk, index_topk, sparse, attention, dense) only launch on
torch.cuda.current_stream() and may be captured when their outputs are
preallocated (out=, lse=).  A captured graph uses the plan's device memory:
keep the plan open as long as the graph.  One plan's workspace serves one
run at a time, so do not run one plan on two streams at once.

Every tensor is checked (type, device, dtype, shape, contiguity) before
anything launches; a mismatch raises msagen.Error naming the argument,
what was expected and what came, e.g.
"q: expected shape (300, 64, 128), got (300, 64, 64)".
"""

import threading
import weakref
from ctypes import POINTER, byref, c_int, c_void_p, cast

from . import _args, _capi, _cuda
from .errors import MSA_EINVAL, Error
from .spec import Closing, Context, LayerSpec, as_spec

_TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp8_e4m3": "float8_e4m3fn"}
SPARSE_MODES = {"auto": 0, "query-outer": 1, "kv-outer": 2}


class AtLeast(int):
    """A leading dimension that may be larger: a page cache holds at least
    the pages the table uses when num_pages was not given."""

    def __repr__(self):
        return ">=%d" % int(self)


def _fmt_shape(shape):
    return "(%s)" % ", ".join(repr(d) for d in shape) if len(shape) != 1 else "(%r,)" % shape[0]


def _shape_ok(got, want):
    if len(got) != len(want):
        return False
    return all(g >= w if isinstance(w, AtLeast) else g == w for g, w in zip(got, want))


def _torch_dtype(name):
    t = _cuda.torch()
    dt = getattr(t, _TORCH_DTYPES.get(name, name), None)
    if dt is None:
        raise Error("this torch has no dtype for %s (torch.%s)" % (name, _TORCH_DTYPES[name]),
                    MSA_EINVAL)
    return dt


def _pick_layer(spec, layer):
    if isinstance(spec, LayerSpec):
        return spec
    return as_spec(spec)[layer]


def load(spec, layer=0, cache_dir=None, device=None, arch=None, verbose=False):
    """Compile (or fetch from the memory and disk caches) every kernel of one
    layer for one GPU and return it as a Layer.

    spec: a Spec, a LayerSpec, a path or Lua source; layer: index or name.
    cache_dir: None shares the CLI's disk cache ($MSAGEN_CACHE_DIR, else
    $XDG_CACHE_HOME/msagen, else ~/.cache/msagen).  device: None (torch's
    current device), an ordinal, "cuda:N" or a torch.device.  arch: force a
    target (e.g. "sm_80" on an sm_90 card); None picks the GPU's.  CUDA is
    initialised through torch first, so the library works in torch's
    (primary) context."""
    lspec = _pick_layer(spec, layer)
    idx = _cuda.device_index(device)
    with _cuda.on_device(idx):
        ctx = Context(cache_dir=cache_dir, device=idx, arch=arch, verbose=verbose)
        h = c_void_p()
        rc = _capi.lib().msa_module_new(ctx.handle, byref(lspec._c), byref(h))
        if rc:
            err = ctx.error(rc, "msa_module_new")
            ctx.close()
            raise err
    return Layer(lspec, ctx, h, idx)


class Layer(Closing):
    """One loaded layer (an msa_module and its context).  Attributes of its
    LayerSpec (heads_q, topk, dtype_q, ...) read through.  close() or a
    with-block frees it, closing its plans first."""

    def __init__(self, spec, ctx, handle, device_index):
        t = _cuda.torch()
        self.spec = spec
        self.device = t.device("cuda", device_index)
        self._ctx = ctx
        self._h = handle
        self._lock = threading.RLock()
        self._plans = weakref.WeakSet()
        self.dtypes = {"q": _torch_dtype(spec.dtype_q), "kv": _torch_dtype(spec.dtype_kv),
                       "index": _torch_dtype(spec.dtype_index),
                       "out": _torch_dtype(spec.dtype_out), "lse": t.float32,
                       "scores": t.float32, "ids": t.int32}
        self._dummy = t.empty(16, dtype=t.uint8, device=self.device)

    def __getattr__(self, name):
        spec = self.__dict__.get("spec")
        if spec is None or name.startswith("_"):
            raise AttributeError(name)
        return getattr(spec, name)

    @property
    def cache_dir(self):
        return self._ctx.cache_dir

    @property
    def closed(self):
        return not self._h

    def plan(self, cu_q, cu_kv, page_table=None, num_pages=None, scales=None, nsplit=0,
             sparse_mode=0, kvo_workspace=0):
        """A Plan for one batch (host work; not inside CUDA-graph capture).

        cu_q, cu_kv: batch+1 cumulative lengths (sequences or int tensors,
        copied to the host).  page_table: None for contiguous KV, else a
        [batch, pages_per_req] table of page ids (KV then lives in pages of
        `block` tokens); num_pages: pages in the cache tensors (None: any
        number that holds every page the table uses).  scales: fp8
        dequantisation scales {"q", "k", "v", "qi", "ki"} (missing or 0
        means 1).  nsplit: query-outer split-KV count (0: the plan picks).
        sparse_mode: 0/"auto", 1/"query-outer", 2/"kv-outer".
        kvo_workspace: bytes of KV-outer partials per pass (0: the plan
        picks, 1/32 of all partials within 1-8 GiB and a quarter of free memory)."""
        return Plan(self, cu_q, cu_kv, page_table, num_pages, scales, nsplit, sparse_mode,
                    kvo_workspace)

    def dense_plan(self, cu_q, cu_kv, causal=None):
        """A DensePlan (msa_dense_plan: contiguous KV, causal or not,
        bf16/fp16 only)."""
        return DensePlan(self, cu_q, cu_kv, causal)

    def dense(self, q, k, v, cu_q, cu_kv, causal=None, out=None, lse=None):
        """Dense attention over a ragged contiguous batch in one call
        (plans, runs, frees the plan; not for CUDA graphs).  causal: None
        means the layer's.  Returns (out, lse)."""
        with self.dense_plan(cu_q, cu_kv, causal) as p:
            return p.run(q, k, v, out=out, lse=lse)

    # -- shared by plans --------------------------------------------------

    def _check_open(self):
        if not self._h:
            raise Error("layer %s is closed" % self.spec.name, MSA_EINVAL)

    def _tensor(self, name, t, shape, dtype):
        """Check one argument; returns it."""
        torch = _cuda.torch()
        if not isinstance(t, torch.Tensor):
            raise Error("%s: expected a torch.Tensor, got %s" % (name, type(t).__name__),
                        MSA_EINVAL)
        if t.device != self.device:
            raise Error("%s: expected a CUDA tensor on %s, got one on %s"
                        % (name, self.device, t.device), MSA_EINVAL)
        if t.dtype != dtype:
            raise Error("%s: expected dtype %s, got %s" % (name, dtype, t.dtype), MSA_EINVAL)
        if not _shape_ok(tuple(t.shape), shape):
            raise Error("%s: expected shape %s, got %s"
                        % (name, _fmt_shape(shape), _fmt_shape(tuple(t.shape))), MSA_EINVAL)
        if not t.is_contiguous():
            raise Error("%s: expected a contiguous tensor, got strides %s (use .contiguous())"
                        % (name, tuple(t.stride())), MSA_EINVAL)
        return t

    def _output(self, name, t, shape, dtype):
        if t is None:
            return _cuda.torch().empty(tuple(int(d) for d in shape), dtype=dtype,
                                       device=self.device)
        return self._tensor(name, t, shape, dtype)

    def _ptr(self, t):
        """An empty tensor may have no storage; the kernels never read it,
        but the C entry points refuse NULL."""
        return t.data_ptr() if t.numel() else self._dummy.data_ptr()

    def _call(self, fn, *args):
        """One C call on this layer's device, its error raised as Error."""
        with self._lock:
            self._check_open()
            with _cuda.on_device(self.device.index):
                rc = getattr(_capi.lib(), fn)(*args)
                if rc:
                    raise self._ctx.error(rc, fn)

    def _launch(self, fn, handle, ptrs):
        """A run call on the current torch stream (the capture stream under
        torch.cuda.graph)."""
        with self._lock:
            self._check_open()
            with _cuda.on_device(self.device.index):
                stream = _cuda.torch().cuda.current_stream(self.device).cuda_stream
                rc = getattr(_capi.lib(), fn)(handle, *ptrs, stream)
                if rc:
                    raise self._ctx.error(rc, fn)

    def close(self):
        """Free the plans, the module and the context (idempotent)."""
        lock = self.__dict__.get("_lock")
        if lock is None:
            return
        with lock:
            for p in list(self._plans):
                p.close()
            h, self._h = self._h, None
            if h:
                _capi.lib().msa_module_free(h)
            self._ctx.close()

    def __repr__(self):
        return "<msagen.Layer %s on %s%s>" % (self.spec.name, self.device,
                                              " (closed)" if self.closed else "")


class _PlanBase(Closing):
    """What both plan kinds share: the owning layer, the C handle, the
    ctypes arrays (kept alive with the plan), freeing, argument checks."""

    _free = None  # C free function name

    def _register(self, layer, handle):
        self.layer = layer
        self._h = handle
        layer._plans.add(self)

    def _check_open(self):
        if not getattr(self, "_h", None):
            raise Error("plan is closed", MSA_EINVAL)

    def _run(self, fn, inputs, outputs):
        """Check inputs [(name, tensor)] and outputs [(name, tensor|None)],
        allocate missing outputs, launch; returns the outputs."""
        self._check_open()
        lay = self.layer
        ins = [lay._tensor(n, t, self.shapes[n], self._dtype(n)) for n, t in inputs]
        outs = [lay._output(n, t, self.shapes[n], self._dtype(n)) for n, t in outputs]
        if all(o.numel() for o in outs):
            lay._launch(fn, self._h, [lay._ptr(t) for t in ins + outs])
        return outs

    def _dtype(self, name):
        d = self.layer.dtypes
        return d.get(name) or d[{"k": "kv", "v": "kv", "qi": "index", "ki": "index"}[name]]

    @property
    def closed(self):
        return not getattr(self, "_h", None)

    def close(self):
        """Free the plan's device memory (idempotent).  Keep the plan open
        while a CUDA graph that captured it may replay."""
        h, self._h = getattr(self, "_h", None), None
        if not h:
            return
        lay = self.layer
        with lay._lock:
            lay._plans.discard(self)
            if lay._h:
                with _cuda.on_device(lay.device.index):
                    getattr(_capi.lib(), self._free)(h)


def _sparse_mode(m):
    if isinstance(m, str):
        if m not in SPARSE_MODES:
            raise Error("sparse_mode: %r is not one of %s" % (m, ", ".join(SPARSE_MODES)),
                        MSA_EINVAL)
        return SPARSE_MODES[m]
    return int(m)


def _c_ints(vals):
    arr = (c_int * max(len(vals), 1))(*vals)
    return arr, cast(arr, POINTER(c_int))


class Plan(_PlanBase):
    """An msa_plan: one batch's lengths, KV layout, fp8 scales, split count
    and workspace on the device.  Attributes: batch, cu_q, cu_kv, total_q,
    total_kv, paged, pages_per_req, num_pages, nb_max (last dim of scores),
    nsplit, shapes (expected shape of every argument by name)."""

    _free = "msa_plan_free"

    def __init__(self, layer, cu_q, cu_kv, page_table, num_pages, scales, nsplit, sparse_mode,
                 kvo_workspace):
        layer._check_open()
        self.cu_q, self.cu_kv = _args.lengths(cu_q, cu_kv)
        self.batch = len(self.cu_q) - 1
        self.total_q, self.total_kv = self.cu_q[-1], self.cu_kv[-1]
        self._cq, cq = _c_ints(self.cu_q)
        self._ckv, ckv = _c_ints(self.cu_kv)
        table = self._pages(layer.spec.block, page_table, num_pages)
        sc = _args.scales(scales)
        self._batch = _capi.Batch(
            batch=self.batch, cu_q=cq, cu_kv=ckv, page_table=table,
            pages_per_req=self.pages_per_req, num_pages=self.num_pages, scale_q=sc["q"],
            scale_k=sc["k"], scale_v=sc["v"], scale_qi=sc["qi"], scale_ki=sc["ki"],
            nsplit=int(nsplit), sparse_mode=_sparse_mode(sparse_mode),
            kvo_workspace=int(kvo_workspace))
        h = c_void_p()
        layer._call("msa_plan_new", layer._h, byref(self._batch), byref(h))
        self._register(layer, h)
        self.nb_max = _capi.lib().msa_plan_nb_max(h)
        self.nsplit = _capi.lib().msa_plan_nsplit(h)
        self.shapes = self._shapes(layer.spec, num_pages is None)

    def _pages(self, block, page_table, num_pages):
        """Page table -> C array (None: contiguous KV); sets paged,
        pages_per_req and num_pages (inferred when not given)."""
        self.paged = page_table is not None
        self.pages_per_req, self.num_pages = 0, 0
        if not self.paged:
            if num_pages is not None:
                raise Error("num_pages: given without a page_table", MSA_EINVAL)
            return None
        flat, self.pages_per_req = _args.page_table(page_table, self.batch)
        need = _args.pages_needed(flat, self.pages_per_req, self.cu_kv, block)
        self.num_pages = max(need, 1) if num_pages is None else int(num_pages)
        self._table, table = _c_ints(flat)
        return table

    def _shapes(self, s, inferred):
        """Expected shape of every argument, by name (msagen.h's layouts)."""
        tq, hi = self.total_q, s.index_heads
        if self.paged:
            first = AtLeast(self.num_pages) if inferred else self.num_pages
            kv, ki = (first, s.heads_kv, s.block, s.head_dim), (first, s.block, s.index_dim)
        else:
            kv, ki = (self.total_kv, s.heads_kv, s.head_dim), (self.total_kv, s.index_dim)
        return {"q": (tq, s.heads_q, s.head_dim), "k": kv, "v": kv, "qi": (tq, hi, s.index_dim),
                "ki": ki, "out": (tq, s.heads_q, s.head_dim), "lse": (tq, s.heads_q),
                "scores": (hi, tq, self.nb_max), "ids": (hi, tq, s.topk)}

    def index_scores(self, qi, ki, out=None):
        """Block scores, float32 [Hi, total_q, nb_max] (-inf: no visible key)."""
        return self._run("msa_index_scores", [("qi", qi), ("ki", ki)], [("scores", out)])[0]

    def topk(self, scores, out=None):
        """Exp-free top-k of given scores: int32 ids [Hi, total_q, topk], -1 unused."""
        return self._run("msa_topk", [("scores", scores)], [("ids", out)])[0]

    def index_topk(self, qi, ki, out=None):
        """Index branch fused with top-k (scores never reach memory): ids."""
        return self._run("msa_index_topk", [("qi", qi), ("ki", ki)], [("ids", out)])[0]

    def sparse(self, q, k, v, ids, out=None, lse=None):
        """Main branch over given block ids: (out, lse)."""
        return tuple(self._run("msa_sparse_attn",
                               [("q", q), ("k", k), ("v", v), ("ids", ids)],
                               [("out", out), ("lse", lse)]))

    def attention(self, qi, ki, q, k, v, out=None, lse=None):
        """The whole layer (fused index + top-k, then the main branch):
        (out, lse)."""
        return tuple(self._run("msa_attention",
                               [("qi", qi), ("ki", ki), ("q", q), ("k", k), ("v", v)],
                               [("out", out), ("lse", lse)]))

    def dense(self, q, k, v, out=None, lse=None):
        """Dense attention over the plan's KV layout (causal as the layer
        says): (out, lse)."""
        return tuple(self._run("msa_dense", [("q", q), ("k", k), ("v", v)],
                               [("out", out), ("lse", lse)]))

    def __repr__(self):
        return "<msagen.Plan %s batch=%d total_q=%d total_kv=%d%s nb_max=%d nsplit=%d%s>" % (
            self.layer.spec.name, self.batch, self.total_q, self.total_kv,
            " paged(%d pages)" % self.num_pages if self.paged else "", self.nb_max,
            self.nsplit, " (closed)" if self.closed else "")


class DensePlan(_PlanBase):
    """An msa_dense_plan: dense attention over contiguous KV with its own
    causal flag.  run() only launches (CUDA-graph safe)."""

    _free = "msa_dense_plan_free"

    def __init__(self, layer, cu_q, cu_kv, causal):
        layer._check_open()
        s = layer.spec
        self.cu_q, self.cu_kv = _args.lengths(cu_q, cu_kv)
        self.batch = len(self.cu_q) - 1
        self.total_q, self.total_kv = self.cu_q[-1], self.cu_kv[-1]
        self.causal = s.causal if causal is None else bool(causal)
        self._cq, cq = _c_ints(self.cu_q)
        self._ckv, ckv = _c_ints(self.cu_kv)
        h = c_void_p()
        layer._call("msa_dense_plan_new", layer._h, self.batch, cq, ckv, int(self.causal),
                    byref(h))
        self._register(layer, h)
        tq, tkv = self.total_q, self.total_kv
        self.shapes = {"q": (tq, s.heads_q, s.head_dim), "k": (tkv, s.heads_kv, s.head_dim),
                       "v": (tkv, s.heads_kv, s.head_dim), "out": (tq, s.heads_q, s.head_dim),
                       "lse": (tq, s.heads_q)}

    def run(self, q, k, v, out=None, lse=None):
        """(out, lse) for this batch."""
        return tuple(self._run("msa_dense_run", [("q", q), ("k", k), ("v", v)],
                               [("out", out), ("lse", lse)]))

    def __repr__(self):
        return "<msagen.DensePlan %s batch=%d total_q=%d total_kv=%d %s%s>" % (
            self.layer.spec.name, self.batch, self.total_q, self.total_kv,
            "causal" if self.causal else "non-causal", " (closed)" if self.closed else "")

#!/usr/bin/env python3
"""t_python.py - the PyTorch binding (python/msagen), as TAP for prove.

CPU part (always): the library is found, the ctypes mirror matches the C
header offset by offset, specs load (files and Lua strings) with the
loader's file:line messages, `build` fills a disk cache the CLI shares.

GPU part (skipped, count kept, without torch or a GPU): every run call
against float64 references computed with torch on fresh random inputs and
ragged lengths that are not multiples of the block: dense against SDPA,
index scores, top-k against the contract's rule, fused index + top-k,
both sparse forms, the whole layer, paged decode, argument errors, CUDA
graph capture.  Set MSAGEN_TEST_SEED to replay a run.
"""

import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))

import msagen  # noqa: E402
from msagen import _args, _capi  # noqa: E402

SEED = int(os.environ.get("MSAGEN_TEST_SEED") or time.time_ns() % 2**31)
CPU, GPU = [], []


def cpu(desc):
    def reg(fn):
        CPU.append((desc, fn))
        return fn
    return reg


def gpu(desc):
    def reg(fn):
        GPU.append((desc, fn))
        return fn
    return reg


class Skip(Exception):
    """Raised by a check that cannot apply here (reported as TAP skip)."""


class Tap:
    def __init__(self, n):
        self.n, self.failed = 0, 0
        print("1..%d" % n, flush=True)

    def diag(self, msg):
        for line in str(msg).splitlines() or [""]:
            print("# " + line)
        sys.stdout.flush()

    def run(self, desc, fn):
        self.n += 1
        try:
            note = fn()
        except Skip as s:
            print("ok %d - %s # skip %s" % (self.n, desc, s), flush=True)
            return
        except Exception:
            self.failed += 1
            print("not ok %d - %s" % (self.n, desc), flush=True)
            self.diag(traceback.format_exc().rstrip())
            return
        print("ok %d - %s" % (self.n, desc), flush=True)
        if note:
            self.diag(note)

    def skip(self, desc, why):
        self.n += 1
        print("ok %d - %s # skip %s" % (self.n, desc, why), flush=True)


def raises(fn, *want):
    """The msagen.Error fn raises; every string in want must be in it."""
    try:
        fn()
    except msagen.Error as e:
        for w in want:
            assert w in str(e), "message %r lacks %r" % (str(e), w)
        return e
    raise AssertionError("no msagen.Error raised (wanted one containing %r)" % (want,))


def spec_path(name):
    return os.path.join(ROOT, "specs", name)


# ------------------------------------------------------------------ CPU


@cpu("the library is found and loads")
def t_lib():
    path = msagen.lib_path()
    assert os.path.isfile(path), path
    want = os.environ.get("MSAGEN_LIB") or os.path.join(ROOT, "build", "libmsagen.so")
    assert os.path.samefile(path, want), "loaded %s, expected %s" % (path, want)
    return "library: %s" % path


@cpu("a missing library: import works, first use raises msagen.Error naming the search")
def t_nolib():
    code = ("import msagen\n"
            "try:\n    msagen.load_spec('specs/tiny.lua')\n"
            "except msagen.Error as e:\n    print('ERR', e.status_name, e)\n")
    env = dict(os.environ, MSAGEN_LIB="/nonexistent/libmsagen.so",
               PYTHONPATH=os.path.join(ROOT, "python"))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ERR library not loaded"), r.stdout
    assert "/nonexistent/libmsagen.so" in r.stdout and "$MSAGEN_LIB" in r.stdout, r.stdout


def _layout_program():
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "msagen.h"',
             "int main(void)", "{"]
    for cname, cls in _capi.STRUCTS:
        lines.append('\tprintf("%s %%zu\\n", sizeof(%s));' % (cname, cname))
        for f in cls._fields_:
            lines.append('\tprintf("%s.%s %%zu\\n", offsetof(%s, %s));'
                         % (cname, f[0], cname, f[0]))
    lines += ["\treturn 0;", "}"]
    return "\n".join(lines) + "\n"


def _python_layout():
    import ctypes
    out = {}
    for cname, cls in _capi.STRUCTS:
        out[cname] = ctypes.sizeof(cls)
        for f in cls._fields_:
            out["%s.%s" % (cname, f[0])] = getattr(cls, f[0]).offset
    return out


@cpu("ctypes structs match msagen.h (sizeof and every offsetof, from a C program)")
def t_layout():
    cc = os.environ.get("CC", "cc")
    if not shutil.which(cc):
        raise AssertionError("no C compiler (%s) to check the layout" % cc)
    cuda = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    with tempfile.TemporaryDirectory() as d:
        src, exe = os.path.join(d, "layout.c"), os.path.join(d, "layout")
        with open(src, "w") as f:
            f.write(_layout_program())
        subprocess.run([cc, "-std=c11", "-I" + os.path.join(ROOT, "runtime"),
                        "-I" + os.path.join(cuda, "include"), src, "-o", exe], check=True)
        got = dict(line.split() for line in subprocess.run(
            [exe], check=True, capture_output=True, text=True).stdout.splitlines())
    py = _python_layout()
    bad = ["%s: C %s, Python %d" % (k, got.get(k), v) for k, v in py.items()
           if got.get(k) != str(v)]
    assert not bad, "\n".join(bad)
    assert py["msa_layer"] == _capi.STRUCT_SIZES["msa_layer"]
    return "%d sizes and offsets agree" % len(py)


@cpu("every shipped spec loads")
def t_all_specs():
    specs = sorted(f for f in os.listdir(os.path.join(ROOT, "specs")) if f.endswith(".lua"))
    assert specs, "no specs"
    notes = []
    for f in specs:
        s = msagen.load_spec(spec_path(f))
        assert len(s) >= 1, f
        assert len(set(s.names)) == len(s), "%s: duplicate names %s" % (f, s.names)
        for layer in s:
            assert layer.heads_q == layer.group * layer.heads_kv, layer
            assert layer.file == spec_path(f), layer.file
        notes.append("%s: %s" % (f, ", ".join(s.names)))
    return "\n".join(notes)


@cpu("minimax-m3 fields")
def t_m3():
    s = msagen.load_spec(spec_path("minimax-m3.lua"))
    m = s["minimax-m3"]
    want = dict(name="minimax-m3", heads_q=64, heads_kv=4, group=16, head_dim=128, index_heads=4,
                index_dim=128, block=128, topk=16, local_blocks=1, sink_blocks=0,
                dtype_q="bf16", dtype_kv="bf16", dtype_index="bf16", dtype_out="bf16",
                causal=True, arch=["sm_90a", "sm_80"],
                tune={"dense_fwd": {"block_m": [64, 128], "block_n": [32, 64]}})
    for k, v in want.items():
        assert getattr(m, k) == v, "%s = %r, want %r" % (k, getattr(m, k), v)
    assert abs(m.scale - 1 / math.sqrt(128)) < 1e-12, m.scale
    assert m.line == 4, m.line
    assert m is s[0] and m == s[0]
    f8 = msagen.load_spec(spec_path("minimax-m3-fp8.lua"))[0]
    assert (f8.dtype_q, f8.dtype_kv, f8.dtype_index, f8.dtype_out) == \
        ("fp8_e4m3", "fp8_e4m3", "fp8_e4m3", "bf16"), f8
    assert f8.arch == ["sm_90a"], f8.arch
    return repr(m)


LUA = """-- two layers from a loop
for i, g in ipairs({ 2, 4 }) do
  layer { name = "l" .. g, heads = { q = 2 * g, kv = 2 }, head_dim = 64,
          block = 64, topk = 8, sink_blocks = 1, causal = (i == 1),
          dtype = { q = "fp16", kv = "fp16", index = "bf16", out = "fp16" } }
end
"""


@cpu("a spec from Lua source: the string rule, lua= and name=")
def t_lua_string():
    s = msagen.load_spec(LUA)  # not a path, mentions layer, has newlines: Lua source
    assert s.names == ["l2", "l4"], s.names
    a, b = s
    assert (a.heads_q, a.group, b.heads_q, b.group) == (4, 2, 8, 4), (a, b)
    assert (a.dtype_q, a.dtype_index, a.dtype_out) == ("fp16", "bf16", "fp16"), a
    assert a.causal and not b.causal and a.sink_blocks == 1 and b.topk == 8
    assert a.index_dim == 64 and a.block == 64 and a.line == 3, a.to_dict()
    assert a.file == "<string>", a.file
    k = msagen.load_spec(lua=LUA, name="mine.lua")
    assert k.path == "mine.lua" and k[1].file == "mine.lua", (k.path, k[1].file)
    one = msagen.load_spec('layer { name = "x", heads = { q = 8, kv = 2 }, head_dim = 128 }')
    assert one[0].name == "x" and one[0].topk == 16, one
    raises(lambda: s["nope"], "no layer 'nope'", "l2, l4")
    raises(lambda: s[5], "has 2 layers")
    raises(lambda: msagen.load_spec(spec_path("tiny.lua"), lua=LUA), "not both")


def _bad_spec_text():
    return "layer {\n  name = 'x', heads = { q = 48, kv = 5 },\n  head_dim = 64,\n}\n"


@cpu("a bad spec file raises msagen.Error with file:line: field text")
def t_bad_file():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.lua")
        with open(path, "w") as f:
            f.write(_bad_spec_text())
        e = raises(lambda: msagen.load_spec(path),
                   "%s:2: heads.q = 48 is not a multiple of heads.kv = 5" % path)
    assert e.status == 2 and e.code == "MSA_ESPEC" and e.status_name == "spec error", repr(e)
    return str(e)


@cpu("a bad Lua string raises msagen.Error named by name= (x.lua:2: ...)")
def t_bad_string():
    e = raises(lambda: msagen.load_spec(lua=_bad_spec_text(), name="x.lua"),
               "x.lua:2: heads.q = 48 is not a multiple of heads.kv = 5")
    assert e.code == "MSA_ESPEC", repr(e)
    e = raises(lambda: msagen.load_spec(lua="layer { name = 'y', heads = { q = 8, kv = 2 },\n"
                                        "head_dim = 96 }\n", name="y.lua"),
               "y.lua:2: head_dim = 96")
    return str(e)


@cpu("a missing spec file raises msagen.Error")
def t_missing_file():
    e = raises(lambda: msagen.load_spec(os.path.join(ROOT, "specs", "no-such.lua")), "no-such.lua")
    assert e.code == "MSA_EIO", repr(e)


class BuildState:
    dir = None
    first = None


def _build_dir():
    if BuildState.dir is None:
        BuildState.dir = tempfile.mkdtemp(prefix="msagen-t_python-")
    return BuildState.dir


@cpu("build tiny.lua into an empty cache: every variant compiles")
def t_build_cold():
    seen = []
    st = msagen.build(spec_path("tiny.lua"), cache_dir=_build_dir(),
                      progress=lambda done, total, line: seen.append((done, total, line)))
    BuildState.first = st
    assert st["variants"] > 0 and st["compiled"] == st["variants"], st
    assert st["disk_hits"] == 0 and st["failed"] == 0, st
    assert st["cache_dir"] == _build_dir(), st
    assert sorted(d for d, _, _ in seen) == list(range(1, st["variants"] + 1)), seen
    assert all(t == st["variants"] and line.startswith("compiled ") for _, t, line in seen), seen
    return "%(variants)d variants compiled in %(seconds).2f s" % st


@cpu("build tiny.lua again: all disk cache hits")
def t_build_warm():
    st = msagen.build(msagen.load_spec(spec_path("tiny.lua")), cache_dir=_build_dir(), jobs=1)
    n = BuildState.first["variants"] if BuildState.first else st["variants"]
    assert st["variants"] == n and st["disk_hits"] == n and st["compiled"] == 0, st
    one = msagen.build(msagen.load_spec(spec_path("tiny.lua"))[0], arch="sm_80",
                       cache_dir=_build_dir())
    assert one["compiled"] == 0 and one["disk_hits"] == one["variants"] and 0 < one["variants"] < n, one
    return "%(variants)d hits in %(seconds).3f s" % st


@cpu("the CLI finds the kernels the binding built (one disk cache)")
def t_build_cli():
    exe = os.environ.get("MSAGEN_BIN") or os.path.join(ROOT, "build", "msagen")
    if not os.access(exe, os.X_OK):
        raise Skip("no msagen binary (MSAGEN_BIN)")
    r = subprocess.run([exe, "build", spec_path("tiny.lua"), "--cache-dir", _build_dir(), "-q"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 compiled" in r.stdout + r.stderr, r.stdout + r.stderr
    return r.stdout.strip() or r.stderr.strip()


@cpu("build with an unknown arch raises msagen.Error")
def t_build_bad_arch():
    raises(lambda: msagen.build(spec_path("tiny.lua"), arch="sm_99", cache_dir=_build_dir()),
           "unknown arch 'sm_99'")


@cpu("host arguments: lengths, page tables, scales")
def t_host_args():
    q, kv = _args.lengths((0, 3, 5), range(0, 30, 10))
    assert (q, kv) == ([0, 3, 5], [0, 10, 20]), (q, kv)
    raises(lambda: _args.lengths([0, 1.5], [0, 2]), "cu_q: expected a 1-D sequence of ints")
    raises(lambda: _args.lengths([0, 1, 2], [0, 2]), "cu_kv: expected 3")
    raises(lambda: _args.lengths([0], [0]), "cu_q: expected batch+1 >= 2")
    raises(lambda: _args.lengths([0, 2**31], [0, 1]), "does not fit in int32")
    flat, per = _args.page_table([[3, 1, 7], [0, 2, 9]], 2)
    assert (flat, per) == ([3, 1, 7, 0, 2, 9], 3), (flat, per)
    # request 0 (100 keys) uses pages 3, 1; request 1 (200 keys) uses 0, 2, 9, 7? no: 0, 2, 9
    assert _args.pages_needed(flat, per, [0, 100, 300], 64) == 10
    assert _args.pages_needed(flat, per, [0, 100, 228], 64) == 4  # 3, 1 / 0, 2
    raises(lambda: _args.page_table([[1, 2], [3]], 2), "page_table[1]: expected 2 pages")
    raises(lambda: _args.page_table([[1, 2]], 2), "expected 2 rows")
    s = _args.scales({"q": 0.5, "ki": 2})
    assert s == {"q": 0.5, "k": 0.0, "v": 0.0, "qi": 0.0, "ki": 2.0}, s
    raises(lambda: _args.scales({"x": 1}), "unknown key 'x'")
    raises(lambda: _args.scales({"q": -1}), "must be >= 0")


@cpu("load() without a usable GPU raises msagen.Error")
def t_load_nogpu():
    try:
        import torch
    except ImportError:
        raises(lambda: msagen.load(spec_path("tiny.lua")), "needs PyTorch")
        return "no torch"
    if torch.cuda.is_available():
        raise Skip("a GPU is present (the GPU checks load layers)")
    e = raises(lambda: msagen.load(spec_path("tiny.lua")), "no CUDA device")
    assert e.code == "MSA_ENODEV", repr(e)


# ------------------------------------------------------------------ GPU

# Layer A: MiniMax-M3's rules (local 1, sink 0) with fewer heads; layer B:
# k = 16 for the top-k checks.
GPU_SPEC = """
layer { name = "a", heads = { q = 8, kv = 2 }, head_dim = 128, index_dim = 128,
        block = 64, topk = 4, local_blocks = 1, sink_blocks = 0, dtype = "bf16" }
layer { name = "b", heads = { q = 8, kv = 2 }, head_dim = 64, index_dim = 64,
        block = 64, topk = 16, local_blocks = 1, sink_blocks = 0, dtype = "bf16" }
"""


class Env:
    """What the GPU checks share, made on first use; a setup failure fails
    every GPU check with the same message."""

    made = None
    error = None

    @classmethod
    def get(cls):
        if cls.error:
            raise AssertionError("GPU setup failed:\n" + cls.error)
        if cls.made is None:
            try:
                cls.made = cls()
            except Exception:
                cls.error = traceback.format_exc()
                raise
        return cls.made

    def __init__(self):
        import torch
        self.torch = torch
        self.dev = torch.device("cuda", torch.cuda.current_device())
        self.rng = random.Random(SEED)
        self.gen = torch.Generator(device=self.dev)
        self.gen.manual_seed(SEED)
        self.spec = msagen.load_spec(lua=GPU_SPEC, name="t_python.lua")
        t0 = time.time()
        self.a = msagen.load(self.spec, "a")
        self.b = msagen.load(self.spec, layer=1, device=self.dev)
        self.load_s = time.time() - t0


def T():
    return Env.get().torch


def rand(shape, dtype, amp=1.0):
    """Uniform in [-amp, amp), rounded to dtype on the GPU."""
    e = Env.get()
    x = torch_rand(shape, e)
    return (x * (2 * amp) - amp).to(dtype)


def torch_rand(shape, e):
    return e.torch.rand(shape, generator=e.gen, device=e.dev, dtype=e.torch.float32)


def ragged(batch, max_q, max_extra, min_q=1):
    """cu_q, cu_kv of random lengths (kv_len >= q_len), never all multiples
    of 64."""
    e = Env.get()
    cu_q, cu_kv = [0], [0]
    for _ in range(batch):
        ql = e.rng.randint(min_q, max_q)
        kl = ql + e.rng.randint(0, max_extra)
        if kl % 64 == 0:
            kl += 1
        cu_q.append(cu_q[-1] + ql)
        cu_kv.append(cu_kv[-1] + kl)
    return cu_q, cu_kv


def lengthen_first(cu_kv, extra):
    """cu_kv with request 0's kv_len grown by about extra (kept off a
    multiple of 64)."""
    kl = cu_kv[1] + extra
    extra += 1 if kl % 64 == 0 else 0
    return [cu_kv[0]] + [c + extra for c in cu_kv[1:]]


def inputs(layer, cu_q, cu_kv):
    """qi, ki, q, k, v for a contiguous batch, in the layer's dtypes."""
    s, d = layer.spec, layer.dtypes
    tq, tkv = cu_q[-1], cu_kv[-1]
    return (rand((tq, s.index_heads, s.index_dim), d["index"]),
            rand((tkv, s.index_dim), d["index"]),
            rand((tq, s.heads_q, s.head_dim), d["q"]),
            rand((tkv, s.heads_kv, s.head_dim), d["kv"]),
            rand((tkv, s.heads_kv, s.head_dim), d["kv"]))


def causal_mask(ql, kl):
    """[ql, kl]: query i at position kl - ql + i sees keys j <= it."""
    t = T()
    dev = Env.get().dev
    pos = t.arange(kl - ql, kl, device=dev)
    return t.arange(kl, device=dev)[None, :] <= pos[:, None]


def positions(cu_q, cu_kv):
    t = T()
    pos = []
    for r in range(len(cu_q) - 1):
        ql, kl = cu_q[r + 1] - cu_q[r], cu_kv[r + 1] - cu_kv[r]
        pos.extend(range(kl - ql, kl))
    return t.tensor(pos, dtype=t.int64, device=Env.get().dev)


def ref_attend(q, k, v, mask, scale):
    """Softmax attention in float64: q [ql, Hq, D], k, v [kl, Hkv, D], mask
    [Hq or 1, ql, kl] -> out [ql, Hq, D] (0 for empty rows), lse [ql, Hq]
    (logsumexp of the scaled logits, -inf for empty rows)."""
    t = T()
    g = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    logits = t.einsum("qhd,khd->hqk", q, kk) * scale
    logits = logits.masked_fill(~mask, float("-inf"))
    lse = t.logsumexp(logits, dim=-1)
    p = t.exp(logits - lse[..., None]).nan_to_num(0.0)
    return t.einsum("hqk,khd->qhd", p, vv), lse.transpose(0, 1)


def ref_dense(q, k, v, cu_q, cu_kv, scale, causal):
    """Per request: out from SDPA (float64, explicit bottom-right mask),
    lse from ref_attend's logsumexp."""
    t = T()
    F = t.nn.functional
    out = t.zeros(q.shape, dtype=t.float64, device=q.device)
    lse = t.full(q.shape[:2], float("-inf"), dtype=t.float64, device=q.device)
    g = q.shape[1] // k.shape[1]
    for r in range(len(cu_q) - 1):
        q0, q1, k0, k1 = cu_q[r], cu_q[r + 1], cu_kv[r], cu_kv[r + 1]
        if q1 == q0 or k1 == k0:
            continue
        qr, kr, vr = q[q0:q1].double(), k[k0:k1].double(), v[k0:k1].double()
        mask = causal_mask(q1 - q0, k1 - k0) if causal else \
            t.ones(q1 - q0, k1 - k0, dtype=t.bool, device=q.device)
        o = F.scaled_dot_product_attention(
            qr.transpose(0, 1)[None], kr.repeat_interleave(g, 1).transpose(0, 1)[None],
            vr.repeat_interleave(g, 1).transpose(0, 1)[None], attn_mask=mask, scale=scale)
        out[q0:q1] = o[0].transpose(0, 1)
        lse[q0:q1] = ref_attend(qr, kr, vr, mask[None], scale)[1]
    return out, lse


def ref_sparse(q, k, v, ids, cu_q, cu_kv, block, scale):
    """The contract's main branch: per (query, group) the union of the
    selected blocks (-1 and ids past the request's blocks add nothing),
    restricted to causally visible keys; float64."""
    t = T()
    out = t.zeros(q.shape, dtype=t.float64, device=q.device)
    lse = t.full(q.shape[:2], float("-inf"), dtype=t.float64, device=q.device)
    g = q.shape[1] // k.shape[1]
    for r in range(len(cu_q) - 1):
        q0, q1, k0, k1 = cu_q[r], cu_q[r + 1], cu_kv[r], cu_kv[r + 1]
        ql, kl = q1 - q0, k1 - k0
        if ql == 0:
            continue
        nb = (kl + block - 1) // block
        idr = ids[:, q0:q1, :].long()
        idr = t.where((idr >= 0) & (idr < nb), idr, t.full_like(idr, nb))
        bm = t.zeros(idr.shape[0], ql, nb + 1, dtype=t.bool, device=q.device)
        bm.scatter_(2, idr, True)
        tm = bm[..., :nb].repeat_interleave(block, dim=2)[..., :kl] & causal_mask(ql, kl)[None]
        o, lr = ref_attend(q[q0:q1].double(), k[k0:k1].double(), v[k0:k1].double(),
                           tm.repeat_interleave(g, dim=0), scale)
        out[q0:q1], lse[q0:q1] = o, lr
    return out, lse


def ref_scores(qi, ki, cu_q, cu_kv, block, nb_max):
    """Block scores: max over a block's visible keys of qi . ki, -inf where
    none (float64)."""
    t = T()
    hi, tq = qi.shape[1], qi.shape[0]
    out = t.full((hi, tq, nb_max), float("-inf"), dtype=t.float64, device=qi.device)
    for r in range(len(cu_q) - 1):
        q0, q1, k0, k1 = cu_q[r], cu_q[r + 1], cu_kv[r], cu_kv[r + 1]
        ql, kl = q1 - q0, k1 - k0
        if ql == 0 or kl == 0:
            continue
        s = t.einsum("qhd,kd->hqk", qi[q0:q1].double(), ki[k0:k1].double())
        s = s.masked_fill(~causal_mask(ql, kl)[None], float("-inf"))
        s = t.nn.functional.pad(s, (0, nb_max * block - kl), value=float("-inf"))
        out[:, q0:q1, :] = s.view(hi, ql, nb_max, block).amax(-1)
    return out


def ref_topk(scores, cu_q, cu_kv, block, k, local, sink):
    """The contract's top-k: n <= k visible blocks -> 0..n-1 then -1; else
    sinks first, the local block in slot k-1 and between them the best of
    the other candidates by descending score, ties to the lower id (a
    stable descending sort).  NaN ranks as -inf."""
    t = T()
    hi, tq, nb = scores.shape
    n = positions(cu_q, cu_kv) // block + 1
    slots = t.arange(k, device=scores.device)
    small = t.where(slots[None, :] < n[:, None], slots[None, :], t.full_like(slots, -1)[None, :])
    ids = small[None].expand(hi, tq, k).clone()
    big = n > k
    if not bool(big.any()):
        return ids.int()
    blk = t.arange(nb, device=scores.device)
    cand = (blk[None, :] >= sink) & (blk[None, :] < (n - local)[:, None])
    key = scores.nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    key = key.masked_fill(~cand[None], float("-inf"))
    order = t.sort(key, dim=-1, descending=True, stable=True).indices
    m = k - sink - local
    row = t.empty(hi, tq, k, dtype=t.int64, device=scores.device)
    row[..., :sink] = t.arange(sink, device=scores.device)
    row[..., sink:sink + m] = order[..., :m]
    if local:
        row[..., k - 1] = (n - 1)[None, :]
    ids[:, big] = row[:, big]
    return ids.int()


def topk_mismatch(got, want, scores, cu_q, cu_kv, block, k, local, sink, rel=1e-5, abs_=1e-4):
    """None when got is the contract's answer up to near-ties: forced slots
    (and rows with n <= k) equal; each ranked slot a distinct candidate
    whose score is within abs_ + rel * max(|a|, |b|) of the score of the
    reference's block in that slot.  Else a message on the first bad row."""
    t = T()
    n = positions(cu_q, cu_kv) // block + 1
    hi, tq, nb = scores.shape
    slots = t.arange(k, device=got.device)
    forced = (n[None, :, None] <= k) | (slots < sink)[None, None, :]
    if local:
        forced = forced | (slots == k - 1)[None, None, :]
    g, w = got.long(), want.long()
    bad = forced & (g != w)
    cand = (g >= sink) & (g < (n - local)[None, :, None])
    gs = scores.gather(-1, g.clamp(0, nb - 1))
    ws = scores.gather(-1, w.clamp(0, nb - 1))
    close = (gs == ws) | ((gs - ws).abs() <= abs_ + rel * t.maximum(gs.abs(), ws.abs()))
    bad |= ~forced & ~(cand & close)
    srt = g.sort(dim=-1).values
    dup = ((srt[..., 1:] == srt[..., :-1]) & (srt[..., 1:] >= 0)).any(-1)
    rows = bad.any(-1) | dup
    if not bool(rows.any()):
        return None
    h, q = [int(x) for x in rows.nonzero()[0]]
    return ("group %d query %d (%d visible blocks): got %s, want %s, scores got %s want %s"
            % (h, q, int(n[q]), got[h, q].tolist(), want[h, q].tolist(),
               ["%.6g" % x for x in gs[h, q].tolist()], ["%.6g" % x for x in ws[h, q].tolist()]))


def rel_err(got, ref):
    """Frobenius relative error, like tests/ref.h's ref_rel_err."""
    t = T()
    got = got.double()
    d = t.where(got == ref, t.zeros_like(ref), got - ref)
    den = ref[t.isfinite(ref)].norm()
    return float(d.norm() / den) if den > 0 else float(d.norm())


def check_attn(what, out, lse, ref_out, ref_lse, tol=1e-2, ltol=2e-3):
    """out within tol (relative), lse within ltol (absolute), -inf rows alike."""
    t = T()
    assert bool(t.isfinite(out.double()).all()), "%s: non-finite output" % what
    err = rel_err(out, ref_out)
    assert err <= tol, "%s: out rel err %.3e > %.0e" % (what, err, tol)
    gl = lse.double()
    inf_g, inf_r = t.isinf(gl), t.isinf(ref_lse)
    assert bool((inf_g == inf_r).all()) and bool((gl[inf_g] < 0).all()), \
        "%s: -inf lse rows differ" % what
    fin = ~inf_r
    lerr = float((gl[fin] - ref_lse[fin]).abs().max()) if bool(fin.any()) else 0.0
    assert lerr <= ltol, "%s: lse max err %.3e > %.0e" % (what, lerr, ltol)
    return "%s: out rel err %.2e, lse max err %.2e" % (what, err, lerr)


def prefill(layer, batch=3, max_q=300, max_extra=700):
    """A contiguous prefill batch (one long request so that n > k): cu_q,
    cu_kv, the inputs and a plan."""
    cu_q, cu_kv = ragged(batch, max_q, max_extra)
    need = layer.spec.topk * layer.spec.block + 100
    if cu_kv[1] < need:
        cu_kv = lengthen_first(cu_kv, need - cu_kv[1] + Env.get().rng.randint(0, 300))
    return cu_q, cu_kv, inputs(layer, cu_q, cu_kv)


class Case:
    """The prefill case of layer A, shared by several checks."""

    made = None

    @classmethod
    def get(cls):
        if cls.made is None:
            e = Env.get()
            c = cls()
            c.cu_q, c.cu_kv, c.x = prefill(e.a)
            c.plan = e.a.plan(c.cu_q, c.cu_kv)
            cls.made = c
        return cls.made


def shape_note(cu_q, cu_kv):
    return "lengths q %s kv %s" % ([b - a for a, b in zip(cu_q, cu_q[1:])],
                                   [b - a for a, b in zip(cu_kv, cu_kv[1:])])


@gpu("load two layers (JIT or cache) and plan a ragged prefill batch")
def g_load():
    e, c = Env.get(), Case.get()
    p = c.plan
    assert e.a.device == e.dev and e.a.heads_q == 8 and e.b.topk == 16
    assert p.total_q == c.cu_q[-1] and p.total_kv == c.cu_kv[-1] and not p.paged
    nb = max((b - a + 63) // 64 for a, b in zip(c.cu_kv, c.cu_kv[1:]))
    assert p.nb_max == nb, (p.nb_max, nb)
    assert p.shapes["scores"] == (2, p.total_q, nb) and p.shapes["ids"] == (2, p.total_q, 4)
    return "seed %d; loaded in %.1f s; %s; %r" % (SEED, e.load_s, shape_note(c.cu_q, c.cu_kv), p)


@gpu("dense prefill: out matches SDPA (float64, bottom-right causal)")
def g_dense_out():
    e, c = Env.get(), Case.get()
    qi, ki, q, k, v = c.x
    out, lse = c.plan.dense(q, k, v)
    ro, rl = ref_dense(q, k, v, c.cu_q, c.cu_kv, e.a.scale, True)
    c.dense_ref = (ro, rl, out, lse)
    err = rel_err(out, ro)
    assert bool(T().isfinite(out.double()).all()) and err <= 1e-2, "rel err %.3e" % err
    return "rel err %.2e" % err


@gpu("dense prefill: lse matches logsumexp of the scaled logits")
def g_dense_lse():
    c = Case.get()
    if not hasattr(c, "dense_ref"):
        g_dense_out()
    ro, rl, out, lse = c.dense_ref
    return check_attn("dense", out, lse, ro, rl)


@gpu("index_scores matches float64 block maxima (-inf where no key is visible)")
def g_scores():
    c = Case.get()
    qi, ki = c.x[:2]
    s = c.plan.index_scores(qi, ki)
    ref = ref_scores(qi, ki, c.cu_q, c.cu_kv, 64, c.plan.nb_max)
    t = T()
    inf_r = t.isinf(ref)
    assert bool((t.isinf(s) == inf_r).all()) and bool((s[inf_r] < 0).all()), "-inf blocks differ"
    fin = ~inf_r
    err = float((s.double()[fin] - ref[fin]).abs().max()) / max(float(ref[fin].abs().max()), 1.0)
    assert err <= 1e-3, "score err %.3e" % err
    return "max err %.2e (relative to the largest score)" % err


def _topk_exact(layer, cu_q, cu_kv, plan, x):
    """Standalone top-k on the GPU's scores equals the reference rule on
    the same float scores, slot for slot."""
    s = layer.spec
    scores = plan.index_scores(x[0], x[1])
    ids = plan.topk(scores)
    want = ref_topk(scores.double(), cu_q, cu_kv, s.block, s.topk, s.local_blocks, s.sink_blocks)
    assert ids.dtype == T().int32 and tuple(ids.shape) == plan.shapes["ids"]
    if not T().equal(ids, want):
        bad = (ids != want).any(-1).nonzero()[0].tolist()
        raise AssertionError("group %d query %d: got %s want %s" % (
            bad[0], bad[1], ids[bad[0], bad[1]].tolist(), want[bad[0], bad[1]].tolist()))
    big = int(((positions(cu_q, cu_kv) // s.block + 1) > s.topk).sum())
    return scores, ids, "%d of %d queries rank (n > k)" % (big, cu_q[-1])


@gpu("topk (k=4, local 1) equals the contract's rule on the same float scores")
def g_topk_a():
    c = Case.get()
    c.scores, c.ids, note = _topk_exact(Env.get().a, c.cu_q, c.cu_kv, c.plan, c.x)
    return note


class CaseB:
    made = None

    @classmethod
    def get(cls):
        if cls.made is None:
            e = Env.get()
            c = cls()
            c.cu_q, c.cu_kv = ragged(3, 200, 1500)
            c.cu_kv = lengthen_first(c.cu_kv, 1100)  # request 0 has n > 16
            c.x = inputs(e.b, c.cu_q, c.cu_kv)
            c.plan = e.b.plan(c.cu_q, c.cu_kv)
            cls.made = c
        return cls.made


@gpu("topk (k=16, local 1) equals the contract's rule on the same float scores")
def g_topk_b():
    c = CaseB.get()
    c.scores, c.ids, note = _topk_exact(Env.get().b, c.cu_q, c.cu_kv, c.plan, c.x)
    return note + "; " + shape_note(c.cu_q, c.cu_kv)


def _fused_vs_standalone(layer, c):
    if not hasattr(c, "ids"):
        c.scores, c.ids, _ = _topk_exact(layer, c.cu_q, c.cu_kv, c.plan, c.x)
    got = c.plan.index_topk(c.x[0], c.x[1])
    if T().equal(got, c.ids):
        return "identical"
    s = layer.spec
    bad = topk_mismatch(got, c.ids, c.scores.double(), c.cu_q, c.cu_kv, s.block, s.topk,
                        s.local_blocks, s.sink_blocks)
    assert bad is None, bad
    return "equal up to near-ties (%d slots differ)" % int((got != c.ids).sum())


@gpu("index_topk (fused, k=4) equals topk on the GPU's own scores")
def g_fused_a():
    return _fused_vs_standalone(Env.get().a, Case.get())


@gpu("index_topk (fused, k=16) equals topk on the GPU's own scores")
def g_fused_b():
    return _fused_vs_standalone(Env.get().b, CaseB.get())


def _case_ids():
    c = Case.get()
    if not hasattr(c, "ids"):
        g_topk_a()
    return c


def _sparse_form(mode, name):
    e, c = Env.get(), _case_ids()
    qi, ki, q, k, v = c.x
    with e.a.plan(c.cu_q, c.cu_kv, sparse_mode=mode) as p:
        out, lse = p.sparse(q, k, v, c.ids)
    ro, rl = ref_sparse(q, k, v, c.ids, c.cu_q, c.cu_kv, 64, e.a.scale)
    return check_attn(name, out, lse, ro, rl)


@gpu("sparse, query-outer: matches a float64 masked softmax over the chosen blocks")
def g_sparse_qo():
    return _sparse_form("query-outer", "sparse_qo")


@gpu("sparse, KV-outer: matches a float64 masked softmax over the chosen blocks")
def g_sparse_kvo():
    return _sparse_form(2, "sparse_kvo")


def _same(what, a, b, tol=1e-3, ltol=1e-4):
    """Two GPU results of one computation: bitwise, or within rounding of
    a different summation order."""
    t = T()
    (oa, la), (ob, lb) = a, b
    if t.equal(oa, ob) and t.equal(la, lb):
        return "%s: bitwise equal" % what
    err = rel_err(oa, ob.double())
    fin = t.isfinite(lb)
    assert bool((t.isfinite(la) == fin).all()), "%s: -inf lse rows differ" % what
    lerr = float((la[fin] - lb[fin]).abs().max()) if bool(fin.any()) else 0.0
    assert err <= tol and lerr <= ltol, "%s: rel err %.3e, lse err %.3e" % (what, err, lerr)
    return "%s: rel err %.2e, lse err %.2e" % (what, err, lerr)


@gpu("attention equals sparse over index_topk's ids (and the float64 reference)")
def g_attention():
    e, c = Env.get(), Case.get()
    qi, ki, q, k, v = c.x
    got = c.plan.attention(qi, ki, q, k, v)
    ids = c.plan.index_topk(qi, ki)
    via = c.plan.sparse(q, k, v, ids)
    note = _same("attention vs sparse(index_topk)", got, via)
    ro, rl = ref_sparse(q, k, v, ids, c.cu_q, c.cu_kv, 64, e.a.scale)
    return note + "\n" + check_attn("attention", got[0], got[1], ro, rl)


def to_pages(x, table, cu_kv, block, num_pages):
    """x [total_kv, H, Dh] -> pages [num_pages, H, block, Dh]; slots no
    token uses hold large finite garbage, so a kernel that reads past a
    request's keys shows."""
    e = Env.get()
    h, dh = x.shape[1], x.shape[2]
    pages = ((torch_rand((num_pages, h, block, dh), e) * 200 - 100)).to(x.dtype)
    for r in range(len(cu_kv) - 1):
        k0, kl = cu_kv[r], cu_kv[r + 1] - cu_kv[r]
        for b in range((kl + block - 1) // block):
            j0, j1 = b * block, min(b * block + block, kl)
            pages[table[r][b], :, :j1 - j0, :] = x[k0 + j0:k0 + j1].transpose(0, 1)
    return pages


class Decode:
    """A paged decode batch of layer A: q_len 1..16, a shuffled page table
    with a spare column, inputs contiguous (for the references) and paged."""

    made = None

    @classmethod
    def get(cls):
        if cls.made is None:
            cls.made = cls(Env.get().a)
        return cls.made

    def __init__(self, layer, batch=4):
        e = Env.get()
        t = e.torch
        self.cu_q, self.cu_kv = ragged(batch, 16, 1500)
        if self.cu_kv[1] < 400:  # one request with n > k = 4
            self.cu_kv = lengthen_first(self.cu_kv, 400)
        bk = layer.spec.block
        per = max((b - a + bk - 1) // bk for a, b in zip(self.cu_kv, self.cu_kv[1:])) + 1
        self.num_pages = batch * per + 3
        perm = t.randperm(self.num_pages, generator=t.Generator().manual_seed(SEED))
        self.table = perm[:batch * per].view(batch, per).to(t.int32)  # a CPU tensor
        rows = self.table.tolist()
        self.x = inputs(layer, self.cu_q, self.cu_kv)
        qi, ki, q, k, v = self.x
        self.pk = to_pages(k, rows, self.cu_kv, bk, self.num_pages)
        self.pv = to_pages(v, rows, self.cu_kv, bk, self.num_pages)
        self.pki = to_pages(ki[:, None, :], rows, self.cu_kv, bk, self.num_pages)[:, 0]
        self.pki = self.pki.contiguous()
        self.plan = layer.plan(self.cu_q, self.cu_kv, page_table=self.table,
                               num_pages=self.num_pages)

    def paged(self):
        qi, ki, q, k, v = self.x
        return qi, self.pki, q, self.pk, self.pv


@gpu("paged decode: index_topk matches the contract's top-k on float64 scores")
def g_decode_topk():
    d = Decode.get()
    qi, pki = d.paged()[:2]
    ids = d.plan.index_topk(qi, pki)
    ref = ref_scores(d.x[0], d.x[1], d.cu_q, d.cu_kv, 64, d.plan.nb_max)
    want = ref_topk(ref, d.cu_q, d.cu_kv, 64, 4, 1, 0)
    bad = topk_mismatch(ids, want, ref, d.cu_q, d.cu_kv, 64, 4, 1, 0)
    assert bad is None, bad
    d.ids = ids
    return "%r; %s" % (d.plan, shape_note(d.cu_q, d.cu_kv))


@gpu("paged decode: sparse matches the float64 reference (split-KV as planned)")
def g_decode_sparse():
    e, d = Env.get(), Decode.get()
    if not hasattr(d, "ids"):
        d.ids = d.plan.index_topk(*d.paged()[:2])
    qi, pki, q, pk, pv = d.paged()
    out, lse = d.plan.sparse(q, pk, pv, d.ids)
    ro, rl = ref_sparse(q, d.x[3], d.x[4], d.ids, d.cu_q, d.cu_kv, 64, e.a.scale)
    return check_attn("paged sparse (nsplit %d)" % d.plan.nsplit, out, lse, ro, rl)


@gpu("paged decode: dense matches SDPA and logsumexp")
def g_decode_dense():
    e, d = Env.get(), Decode.get()
    qi, pki, q, pk, pv = d.paged()
    out, lse = d.plan.dense(q, pk, pv)
    ro, rl = ref_dense(q, d.x[3], d.x[4], d.cu_q, d.cu_kv, e.a.scale, True)
    return check_attn("paged dense", out, lse, ro, rl)


@gpu("paged decode: attention equals sparse over index_topk's ids")
def g_decode_attention():
    d = Decode.get()
    qi, pki, q, pk, pv = d.paged()
    got = d.plan.attention(qi, pki, q, pk, pv)
    via = d.plan.sparse(q, pk, pv, d.plan.index_topk(qi, pki))
    return _same("paged attention vs sparse(index_topk)", got, via)


@gpu("Layer.dense (plan + run in one call) equals Plan.dense")
def g_layer_dense():
    e, c = Env.get(), Case.get()
    qi, ki, q, k, v = c.x
    return _same("Layer.dense vs Plan.dense", e.a.dense(q, k, v, c.cu_q, c.cu_kv),
                 c.plan.dense(q, k, v))


@gpu("Layer.dense non-causal (kv_len < q_len allowed) matches SDPA")
def g_dense_noncausal():
    e = Env.get()
    t = e.torch
    cu_q, cu_kv = [0], [0]
    for _ in range(3):
        cu_q.append(cu_q[-1] + e.rng.randint(1, 200))
        cu_kv.append(cu_kv[-1] + e.rng.randint(1, 300))
    _, _, q, k, v = inputs(e.a, cu_q, cu_kv)
    out = t.empty(q.shape, dtype=e.a.dtypes["out"], device=e.dev)
    lse = t.empty(q.shape[:2], dtype=t.float32, device=e.dev)
    got = e.a.dense(q, k, v, cu_q, cu_kv, causal=False, out=out, lse=lse)
    assert got[0] is out and got[1] is lse
    ro, rl = ref_dense(q, k, v, cu_q, cu_kv, e.a.scale, False)
    return check_attn("non-causal dense", out, lse, ro, rl) + "; " + shape_note(cu_q, cu_kv)


FP8_SPEC = """
layer { name = "f8", heads = { q = 8, kv = 2 }, head_dim = 128, index_dim = 128,
        block = 64, topk = 4, dtype = { q = "fp8_e4m3", kv = "fp8_e4m3",
        index = "fp8_e4m3", out = "bf16" } }
"""


@gpu("fp8 e4m3 with per-tensor scales: index_topk, attention, dense match float64")
def g_fp8():
    e = Env.get()
    t = e.torch
    sc = {"q": 0.75, "k": 0.5, "v": 1.25, "qi": 2.0, "ki": 0.5}  # not 1: a missed one shows
    with msagen.load(msagen.load_spec(lua=FP8_SPEC, name="fp8.lua")[0]) as lay:
        assert lay.dtypes["q"] == t.float8_e4m3fn and lay.dtypes["out"] == t.bfloat16
        cu_q, cu_kv, x = prefill(lay, max_q=150, max_extra=400)
        qi, ki, q, k, v = x
        dq = [a.float().double() * sc[n] for a, n in zip(x, ("qi", "ki", "q", "k", "v"))]
        with lay.plan(cu_q, cu_kv, scales=sc) as p:
            ids = p.index_topk(qi, ki)
            rs = ref_scores(dq[0], dq[1], cu_q, cu_kv, 64, p.nb_max)
            bad = topk_mismatch(ids, ref_topk(rs, cu_q, cu_kv, 64, 4, 1, 0), rs, cu_q, cu_kv,
                                64, 4, 1, 0)
            assert bad is None, bad
            out, lse = p.attention(qi, ki, q, k, v)
            ro, rl = ref_sparse(dq[2], dq[3], dq[4], ids, cu_q, cu_kv, 64, lay.scale)
            notes = [check_attn("fp8 attention", out, lse, ro, rl, tol=3e-2)]
            out, lse = p.dense(q, k, v)
            ro, rl = ref_dense(dq[2], dq[3], dq[4], cu_q, cu_kv, lay.scale, True)
            notes.append(check_attn("fp8 dense", out, lse, ro, rl, tol=3e-2))
    return "\n".join(notes + [shape_note(cu_q, cu_kv)])


def _bad_call(fn, name, *words):
    e = raises(fn, name + ":", *words)
    return str(e)


@gpu("a wrong dtype raises msagen.Error naming the argument")
def g_err_dtype():
    c = Case.get()
    t = T()
    qi, ki, q, k, v = c.x
    notes = [_bad_call(lambda: c.plan.attention(qi, ki, q.half(), k, v), "q",
                       "expected dtype torch.bfloat16, got torch.float16")]
    ids = t.zeros(c.plan.shapes["ids"], dtype=t.int64, device=q.device)
    notes.append(_bad_call(lambda: c.plan.sparse(q, k, v, ids), "ids", "torch.int32"))
    lse = t.empty(c.plan.shapes["lse"], dtype=t.float16, device=q.device)
    notes.append(_bad_call(lambda: c.plan.dense(q, k, v, lse=lse), "lse", "torch.float32"))
    return "\n".join(notes)


@gpu("a wrong shape raises msagen.Error with expected and actual shapes")
def g_err_shape():
    c = Case.get()
    t = T()
    qi, ki, q, k, v = c.x
    tq = c.plan.total_q
    q64 = t.zeros((tq, 8, 64), dtype=q.dtype, device=q.device)
    msg = _bad_call(lambda: c.plan.dense(q64, k, v), "q")
    assert msg == "q: expected shape (%d, 8, 128), got (%d, 8, 64)" % (tq, tq), msg
    notes = [msg, _bad_call(lambda: c.plan.attention(qi, ki[:-1], q, k, v), "ki",
                            "expected shape (%d, 128)" % c.plan.total_kv)]
    out = t.empty((tq + 1, 8, 128), dtype=q.dtype, device=q.device)
    notes.append(_bad_call(lambda: c.plan.attention(qi, ki, q, k, v, out=out), "out"))
    return "\n".join(notes)


@gpu("a CPU tensor raises msagen.Error naming the argument")
def g_err_cpu():
    c = Case.get()
    qi, ki, q, k, v = c.x
    return _bad_call(lambda: c.plan.attention(qi, ki, q, k.cpu(), v), "k",
                     "expected a CUDA tensor on cuda:", "got one on cpu")


@gpu("a non-contiguous tensor raises msagen.Error naming the argument")
def g_err_noncontig():
    c = Case.get()
    qi, ki, q, k, v = c.x
    vt = v.transpose(1, 2).contiguous().transpose(1, 2)  # right shape, wrong strides
    assert tuple(vt.shape) == tuple(v.shape) and not vt.is_contiguous()
    notes = [_bad_call(lambda: c.plan.attention(qi, ki, q, k, vt), "v", "contiguous")]
    notes.append(_bad_call(lambda: c.plan.sparse(q, k, v, [[0]]), "ids", "torch.Tensor"))
    return "\n".join(notes)


def _graph_check(plan, make_inputs, runs):
    """Capture runs(bufs, outs) into a CUDA graph with preallocated
    outputs, replay it on new values copied into the same buffers, and
    compare with a fresh eager run on those values."""
    t = T()
    bufs = make_inputs()
    outs = runs(bufs, None)  # eager: allocates the outputs we keep
    side = t.cuda.Stream()
    side.wait_stream(t.cuda.current_stream())
    with t.cuda.stream(side):
        runs(bufs, outs)  # warm-up on a side stream, as torch advises
    t.cuda.current_stream().wait_stream(side)
    g = t.cuda.CUDAGraph()
    with t.cuda.graph(g):
        runs(bufs, outs)
    for b, n in zip(bufs, make_inputs()):
        b.copy_(n)
    for o in outs:
        o.fill_(float("nan"))
    g.replay()
    t.cuda.synchronize()
    fresh = runs(bufs, None)
    notes = []
    for i in range(0, len(outs), 2):
        notes.append(_same("replay vs eager #%d" % (i // 2), (outs[i], outs[i + 1]),
                           (fresh[i], fresh[i + 1])))
    return "\n".join(notes)


@gpu("CUDA graph: prefill attention captured (plan outside), replayed on new inputs")
def g_graph_prefill():
    e = Env.get()
    cu_q, cu_kv, _ = prefill(e.a)
    with e.a.plan(cu_q, cu_kv) as p:
        def runs(b, o):
            return list(p.attention(*b, *(o or (None, None))))
        return _graph_check(p, lambda: inputs(e.a, cu_q, cu_kv), runs) + "; %r" % p


@gpu("CUDA graph: paged decode attention + dense captured, replayed on new inputs")
def g_graph_decode():
    e, d = Env.get(), Decode.get()
    with e.a.plan(d.cu_q, d.cu_kv, page_table=d.table.tolist()) as p:
        assert isinstance(p.shapes["k"][0], msagen.AtLeast)

        def runs(b, o):
            qi, pki, q, pk, pv = b
            o = o or (None,) * 4
            return list(p.attention(qi, pki, q, pk, pv, out=o[0], lse=o[1])) + \
                list(p.dense(q, pk, pv, out=o[2], lse=o[3]))

        def fresh():
            x = inputs(e.a, d.cu_q, d.cu_kv)
            rows = d.table.tolist()
            return (x[0], to_pages(x[1][:, None, :], rows, d.cu_kv, 64, d.num_pages)[:, 0]
                    .contiguous(), x[2], to_pages(x[3], rows, d.cu_kv, 64, d.num_pages),
                    to_pages(x[4], rows, d.cu_kv, 64, d.num_pages))
        return _graph_check(p, fresh, runs) + "; %r" % p


@gpu("close(): a closed plan or layer raises msagen.Error; closing a layer closes its plans")
def g_close():
    e = Env.get()
    c = Case.get()
    qi, ki, q, k, v = c.x
    layer = msagen.load(e.spec, "a")  # a new context: disk cache hits
    p = layer.plan(c.cu_q, c.cu_kv)
    p2 = layer.plan(c.cu_q, c.cu_kv)
    p2.close()
    raises(lambda: p2.dense(q, k, v), "plan is closed")
    with layer:
        p.dense(q, k, v)
    assert layer.closed and p.closed
    raises(lambda: p.dense(q, k, v), "plan is closed")
    raises(lambda: layer.plan(c.cu_q, c.cu_kv), "is closed")
    layer.close()  # idempotent


# ------------------------------------------------------------------ main


def gpu_skip_reason():
    try:
        import torch
    except ImportError as e:
        return "no torch (%s)" % e
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


def main():
    tap = Tap(len(CPU) + len(GPU))
    tap.diag("seed %d (MSAGEN_TEST_SEED)" % SEED)
    try:
        for desc, fn in CPU:
            tap.run(desc, fn)
        why = gpu_skip_reason()
        for desc, fn in GPU:
            if why:
                tap.skip(desc, why)
            else:
                tap.run(desc, fn)
    finally:
        if BuildState.dir:
            shutil.rmtree(BuildState.dir, ignore_errors=True)
    if tap.failed:
        tap.diag("%d of %d failed" % (tap.failed, tap.n))
    return 1 if tap.failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Side-by-side benchmark of msagen against what users run instead, in one
run on one GPU: dense attention (torch SDPA, cuDNN and flash backends),
top-k (torch.topk), sparse attention (FlexAttention given the same
selection as its mask), the whole MSA prefill against dense cuDNN, and
decode against dense decode over the same paged cache.

Times are medians of CUDA-event timings after warm-up, on fresh random
inputs.  Writes a markdown table and a PNG plot of speedup against context
length into --out (and splices the table into bench/RESULTS.md with
--results).

    python3 bench/compare.py --out /tmp/cmp [--quick] [--results bench/RESULTS.md]
"""
import argparse
import datetime
import functools
import math
import os
import struct
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import msagen  # noqa: E402

SPEC = os.path.join(HERE, "..", "specs", "minimax-m3.lua")
CEIL_TFLOPS = 790.0  # bf16 matrix-product ceiling measured on the H100
CEIL_TBS = 3.0  # device-to-device copy bandwidth measured on the H100


def median_ms(fn, warmup=2, reps=5, budget_s=20.0):
    """Median of CUDA-event timings; fewer reps when one run is long."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    t_start = time.time()
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
        if time.time() - t_start > budget_s and len(times) >= 1:
            break
    times.sort()
    return times[len(times) // 2]


def interleaved_ms(fns, rounds=7, warmup=1):
    """Median CUDA-event time of each named callable, the callables taking
    turns one run each per round: under the power cap the clock drifts as
    the card heats, and turns spread that drift over all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times[name].append(a.elapsed_time(b))
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


class Table:
    """Rows of results; printed as they come and written as markdown."""

    def __init__(self, path=None, header=""):
        self.rows = []
        self.notes = []
        self.path = path  # rewritten after every row: a cut-off run keeps what it measured
        self.header = header

    def add(self, group, what, size, ms, metric="", baseline=None, speedup=None):
        row = dict(group=group, what=what, size=size, ms=ms, metric=metric,
                   baseline=baseline or "", speedup=speedup)
        self.rows.append(row)
        sp = "" if speedup is None else f"{speedup:6.2f}x"
        print(f"{group:8s} {what:34s} {size:>14s} {ms:10.3f} ms  {metric:28s} {sp}", flush=True)
        self.save()

    def save(self):
        if self.path:
            with open(self.path, "w") as f:
                f.write(self.markdown(self.header))

    def note(self, text):
        self.notes.append(text)
        print("note:", text, flush=True)
        self.save()

    def markdown(self, header):
        out = [header, "", "| stage | kernel | size | median ms | rate | speedup (vs) |",
               "| --- | --- | --- | ---: | --- | --- |"]
        for r in self.rows:
            sp = "" if r["speedup"] is None else f"{r['speedup']:.2f}x vs {r['baseline']}"
            out.append(f"| {r['group']} | {r['what']} | {r['size']} | {r['ms']:.3f} | {r['metric']} | {sp} |")
        if self.notes:
            out.append("")
            out += [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"


def rand(*shape, dtype=torch.bfloat16):
    return torch.randn(*shape, device="cuda", dtype=torch.float32).to(dtype)


def causal_pairs(q_len, kv_len):
    """Visible (query, key) pairs under bottom-right causality."""
    shift = kv_len - q_len
    return q_len * shift + q_len * (q_len + 1) // 2


# ---------------------------------------------------------------- dense

def sdpa(backend, q, k, v, causal=True):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    be = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend]
    with sdpa_kernel([be]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def sdpa_layout(q, k, v):
    """[S, H, D] q and [S, Hkv, D] k, v as SDPA's [1, H, S, D], the kv heads
    repeated for GQA so that every backend takes them."""
    rep = q.shape[1] // k.shape[1]
    return (q.transpose(0, 1).unsqueeze(0), k.repeat_interleave(rep, dim=1).transpose(0, 1).unsqueeze(0),
            v.repeat_interleave(rep, dim=1).transpose(0, 1).unsqueeze(0))


def bench_dense(tab, layer, n, results, causal=True):
    """msagen dense against torch SDPA's cuDNN and flash backends on one
    request of n tokens; gives cuDNN's time (causal: the MSA baseline)."""
    hq, hkv, d = layer.heads_q, layer.heads_kv, layer.head_dim
    q, k, v = rand(n, hq, d), rand(n, hkv, d), rand(n, hkv, d)
    plan = layer.dense_plan([0, n], [0, n], causal)
    out = torch.empty_like(q)
    lse = torch.empty(n, hq, device="cuda", dtype=torch.float32)
    flops = 4 * d * hq * (causal_pairs(n, n) if causal else n * n)
    qt, kt, vt = sdpa_layout(q, k, v)
    fns = {"msagen": lambda: plan.run(q, k, v, out=out, lse=lse)}
    for be in ("cudnn", "flash"):
        fn = (lambda b: lambda: sdpa(b, qt, kt, vt, causal))(be)
        try:
            fn()
            fns[be] = fn
        except Exception as e:  # a backend that refuses the shape
            tab.note(f"dense {n}: torch SDPA {be} failed: {type(e).__name__}: {str(e)[:120]}")
    got = interleaved_ms(fns, rounds=7 if n <= 32768 else 3)
    ms = got.pop("msagen")
    base = {be: t for be, t in got.items() if t}
    size = f"{n // 1024}K {'causal' if causal else 'non-causal'}"
    for be, bms in base.items():
        tab.add("dense", f"torch SDPA {be}", size, bms, f"{flops / bms / 1e9:.0f} TFLOP/s")
    best = min(base.values()) if base else None
    tab.add("dense", "msagen dense_fwd", size, ms, f"{flops / ms / 1e9:.0f} TFLOP/s",
            "fastest torch", best / ms if best else None)
    if causal:
        results.setdefault("dense_cudnn", {})[n] = base.get("cudnn")
    plan.close()
    del qt, kt, vt, fns
    return base.get("cudnn")


# ---------------------------------------------------------------- MSA prefill

def msa_inputs(layer, n):
    hq, hkv, d, di = layer.heads_q, layer.heads_kv, layer.head_dim, layer.index_dim
    return dict(qi=rand(n, hkv, di), ki=rand(n, di), q=rand(n, hq, d), k=rand(n, hkv, d),
                v=rand(n, hkv, d))


def selected_pairs(layer, ids, n):
    """Causally visible (query, key) pairs of the selection, per group."""
    bk = layer.block
    pos = torch.arange(n, device="cuda").view(1, n, 1)
    valid = ids >= 0
    start = ids.clamp(min=0) * bk
    vis = (pos - start + 1).clamp(min=0, max=bk)
    return int((vis * valid).sum().item())


def bench_msa(tab, layer, n, results, dense_ms):
    x = msa_inputs(layer, n)
    plan = layer.plan([0, n], [0, n])
    hq, hkv, d, di = layer.heads_q, layer.heads_kv, layer.head_dim, layer.index_dim
    out = torch.empty_like(x["q"])
    lse = torch.empty(n, hq, device="cuda", dtype=torch.float32)
    ids = torch.empty(hkv, n, layer.topk, device="cuda", dtype=torch.int32)
    reps = 5 if n <= 32768 else 2
    t_it = median_ms(lambda: plan.index_topk(x["qi"], x["ki"], out=ids), reps=reps)
    t_is = None
    if hkv * n * plan.nb_max * 4 <= (4 << 30):  # the score tensor must fit
        scores = torch.empty(hkv, n, plan.nb_max, device="cuda", dtype=torch.float32)
        t_is = median_ms(lambda: plan.index_scores(x["qi"], x["ki"], out=scores), reps=reps)
        del scores
    idx_flops = 2 * di * hkv * causal_pairs(n, n)
    pairs = selected_pairs(layer, ids, n)
    sp_flops = 4 * d * (hq // hkv) * pairs
    t_sp = {}
    for mode, name in ((1, "query-outer"), (2, "KV-outer")):
        p2 = layer.plan([0, n], [0, n], sparse_mode=mode)
        t_sp[name] = median_ms(lambda: p2.sparse(x["q"], x["k"], x["v"], ids, out=out, lse=lse), reps=reps)
        del p2
    t_all = median_ms(lambda: plan.attention(x["qi"], x["ki"], x["q"], x["k"], x["v"], out=out, lse=lse),
                      reps=reps)
    size = f"{n // 1024}K"
    if t_is:
        tab.add("msa", "index branch alone (scores to memory)", size, t_is, f"{idx_flops / t_is / 1e9:.0f} TFLOP/s")
    tab.add("msa", "index + fused top-k", size, t_it, f"{idx_flops / t_it / 1e9:.0f} TFLOP/s"
            + (f", +{100 * (t_it / t_is - 1):.0f}% over scores alone" if t_is else ""))
    for name, t in t_sp.items():
        tab.add("msa", f"sparse attention, {name}", size, t, f"{sp_flops / t / 1e9:.0f} TFLOP/s")
    tab.add("msa", "whole MSA prefill", size, t_all, "", "dense cuDNN causal",
            dense_ms / t_all if dense_ms else None)
    results.setdefault("msa", {})[n] = t_all
    if dense_ms and n <= 131072:
        # The same, in turns with cuDNN dense causal on this layer's heads:
        # the two run in one thermal state (the row above follows seconds
        # of other work, the dense row came earlier).
        qt, kt, vt = sdpa_layout(x["q"], x["k"], x["v"])
        got = interleaved_ms({"msa": lambda: plan.attention(x["qi"], x["ki"], x["q"], x["k"], x["v"], out=out,
                                                            lse=lse),
                              "cudnn": lambda: sdpa("cudnn", qt, kt, vt, True)}, rounds=3 if n > 32768 else 5)
        tab.add("msa", "whole MSA prefill, in turns with cuDNN", size, got["msa"], "",
                f"dense cuDNN causal in turns ({got['cudnn']:.1f} ms)", got["cudnn"] / got["msa"])
        results.setdefault("msa_turns", {})[n] = (got["msa"], got["cudnn"])
        del qt, kt, vt
    return ids, x, plan


# ---------------------------------------------------------------- top-k

def bench_topk(tab, layer, n):
    hkv, bk = layer.heads_kv, layer.block
    nb = (n + bk - 1) // bk
    scores = torch.randn(hkv, n, nb, device="cuda", dtype=torch.float32)
    plan = layer.plan([0, n], [0, n])
    ids = torch.empty(hkv, n, layer.topk, device="cuda", dtype=torch.int32)
    t_ms = median_ms(lambda: plan.topk(scores, out=ids))
    t_torch = median_ms(lambda: torch.topk(scores, layer.topk, dim=-1))
    gb = scores.numel() * 4 / 2 / 1e9  # causal rows read about half
    size = f"{n // 1024}K x {nb}"
    tab.add("topk", "torch.topk (all blocks)", size, t_torch, "")
    tab.add("topk", "msagen topk (causal rows)", size, t_ms, f"{gb / t_ms * 1e3:.0f} GB/s of scores",
            "torch.topk", t_torch / t_ms)


# ---------------------------------------------------------------- FlexAttention

def bench_flex(tab, layer, n, ids, x, plan):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    hq, hkv, bk, nb = layer.heads_q, layer.heads_kv, layer.block, (n + layer.block - 1) // layer.block
    sel = torch.zeros(hkv, n, nb, device="cuda", dtype=torch.bool)
    sel.scatter_(2, ids.clamp(min=0).long(), ids >= 0)
    g = hq // hkv

    def mask_mod(b, h, q_idx, kv_idx):
        return sel[h // g, q_idx, kv_idx // bk] & (kv_idx <= q_idx)

    # _compile: the mask is evaluated per block without materialising Q x KV.
    bm = create_block_mask(mask_mod, B=1, H=hq, Q_LEN=n, KV_LEN=n, device="cuda", _compile=True)
    flex = torch.compile(flex_attention)
    qt = x["q"].transpose(0, 1).unsqueeze(0)
    kt = x["k"].transpose(0, 1).unsqueeze(0)
    vt = x["v"].transpose(0, 1).unsqueeze(0)
    t_flex = median_ms(lambda: flex(qt, kt, vt, block_mask=bm, enable_gqa=True), reps=3)
    out = torch.empty_like(x["q"])
    lse = torch.empty(n, hq, device="cuda", dtype=torch.float32)
    t_ms = median_ms(lambda: plan.sparse(x["q"], x["k"], x["v"], ids, out=out, lse=lse))
    size = f"{n // 1024}K"
    tab.add("sparse", "FlexAttention (selection as mask)", size, t_flex, "")
    tab.add("sparse", "msagen sparse attention", size, t_ms, "", "FlexAttention", t_flex / t_ms)


# ---------------------------------------------------------------- decode

def graph_ms(fn, calls=10, settle_s=0.05):
    """Per-call time of fn replayed from a CUDA graph of `calls` calls, as a
    serving engine runs decode: no launch or host cost between calls.  The
    graph replays back to back for settle_s before the timed runs: after
    eager calls (host-bound, the GPU half idle) the first replays ran
    10-15% slower on the H100 (fp8-index decode b32 128K: 291.6 us, then
    252.4 us in the same process on the same inputs)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    t0 = time.time()
    while time.time() - t0 < settle_s:
        for _ in range(4):
            g.replay()
        torch.cuda.synchronize()
    t = median_ms(g.replay, reps=7) / calls
    del g
    return t


def paged_decode(layer, batch, ctx, qn=1, idt=torch.bfloat16, nsplit=0):
    """Decode inputs: qn new queries per request over ctx cached tokens in
    shuffled pages, the plan (nsplit: its split count, 0 to let it pick),
    and run() for the whole MSA decode step."""
    hq, hkv, d, di, bk = layer.heads_q, layer.heads_kv, layer.head_dim, layer.index_dim, layer.block
    x = argparse.Namespace(per=(ctx + bk - 1) // bk)
    pages = batch * x.per
    x.k_pages, x.v_pages = rand(pages, hkv, bk, d), rand(pages, hkv, bk, d)
    x.ki_pages = rand(pages, bk, di).to(idt)
    x.table = torch.randperm(pages, device="cuda", dtype=torch.int32).view(batch, x.per)
    x.plan = layer.plan([i * qn for i in range(batch + 1)], [i * ctx for i in range(batch + 1)],
                        page_table=x.table.cpu(), num_pages=pages, nsplit=nsplit)
    x.q, x.qi = rand(batch * qn, hq, d), rand(batch * qn, hkv, di).to(idt)
    x.out = torch.empty_like(x.q)
    x.lse = torch.empty(batch * qn, hq, device="cuda", dtype=torch.float32)
    # a partial, not a lambda over x: no reference cycle, so the cache's
    # gigabytes go as soon as the caller drops x
    x.run = functools.partial(x.plan.attention, x.qi, x.ki_pages, x.q, x.k_pages, x.v_pages, out=x.out, lse=x.lse)
    return x


def decode_bytes(layer, x, batch, ctx):
    """Bytes a decode step must read: every page's index keys plus the
    distinct pages its top-k selects (per group and request)."""
    bk, d = layer.block, layer.head_dim
    ids = x.plan.index_topk(x.qi, x.ki_pages)  # [Hi, batch * qn, k] block ids, -1 unused
    srt = ids.view(layer.heads_kv, batch, -1).sort(-1).values
    distinct = int(((srt[..., 1:] != srt[..., :-1]) & (srt[..., 1:] >= 0)).sum() + (srt[..., 0] >= 0).sum())
    return distinct * bk * d * 2 * 2, batch * ctx * layer.index_dim * x.ki_pages.element_size()


def bench_decode(tab, layer, batch, ctx, results, qn=1, fp8_index=False):
    """Decode of qn new queries per request over ctx cached tokens in
    pages: MSA (index + top-k + sparse) against dense decode over the same
    cache, eager and from a CUDA graph.  Bytes it must read: every page's
    index keys plus the distinct pages the top-k selects."""
    hq, hkv, d, bk = layer.heads_q, layer.heads_kv, layer.head_dim, layer.block
    x = paged_decode(layer, batch, ctx, qn, torch.float8_e4m3fn if fp8_index else torch.bfloat16)
    per, table, q, k_pages, v_pages, out, lse = x.per, x.table, x.q, x.k_pages, x.v_pages, x.out, x.lse
    dense = lambda: x.plan.dense(q, k_pages, v_pages, out=out, lse=lse)
    t_msa, t_dense = median_ms(x.run, reps=7), median_ms(dense, reps=7)
    g_msa, g_dense = graph_ms(x.run), graph_ms(dense)
    sel_bytes, idx_bytes = decode_bytes(layer, x, batch, ctx)
    t_sdpa = g_sdpa = None
    what = f"{'fp8' if fp8_index else 'bf16'} index"
    size = f"b{batch} q{qn} {ctx // 1024}K"
    if batch * ctx > (8 << 20):
        tab.note(f"decode {size}: torch SDPA not run (its contiguous copy of the cache would not fit "
                 f"beside the paged one); the speedup is against the dense bytes read at the copy "
                 f"bandwidth, which no dense decode beats")
    else:
        # torch SDPA over the same keys laid out contiguously [B, Hkv, ctx, D]; for
        # qn > 1 not causal (the last qn queries see all but a few of ctx keys)
        kc = k_pages[table.long()].permute(0, 2, 1, 3, 4).reshape(batch, hkv, per * bk, d)[:, :, :ctx]
        vc = v_pages[table.long()].permute(0, 2, 1, 3, 4).reshape(batch, hkv, per * bk, d)[:, :, :ctx]
        qs = q.view(batch, qn, hq, d).transpose(1, 2)
        sd = lambda: F.scaled_dot_product_attention(qs, kc, vc, enable_gqa=True)
        try:
            t_sdpa, g_sdpa = median_ms(sd, reps=7), graph_ms(sd)
        except Exception as e:
            tab.note(f"decode {size}: torch SDPA failed: {type(e).__name__}: {str(e)[:120]}")
        del kc, vc
    dense_bytes = batch * ctx * hkv * d * 2 * 2
    for mode, tm, td, ts in (("", t_msa, t_dense, t_sdpa), (", graph", g_msa, g_dense, g_sdpa)):
        gbs = (sel_bytes + idx_bytes) / tm / 1e6
        tab.add("decode", f"dense decode (msagen, paged{mode})", size, td, f"{dense_bytes / td / 1e6:.0f} GB/s")
        if ts:
            tab.add("decode", f"dense decode (torch SDPA, contiguous{mode})", size, ts,
                    f"{dense_bytes / ts / 1e6:.0f} GB/s")
        floor = None if ts else dense_bytes / (CEIL_TBS * 1e9)  # ms at the copy bandwidth
        best = min(t for t in (td, ts, floor) if t)
        tab.add("decode", f"MSA decode, {what}{mode}", size, tm,
                f"{gbs:.0f} GB/s ({100 * gbs / 1000 / CEIL_TBS:.0f}% of copy)",
                "dense at copy bandwidth" if best == floor else "fastest dense decode", best / tm)
        if mode and qn == 1 and not fp8_index:
            results.setdefault("decode", {})[(batch, ctx)] = best / tm
    x.plan.close()


# ---------------------------------------------------------------- plot

FONT = {  # 3x5 digits and a few letters for axis labels
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", "K": "101101110101101", "M": "101111111101101",
    "x": "000101010101000", ".": "000000000000010", " ": "000000000000000",
}


def write_png(path, series, xs_label="context"):
    """A small line plot (log-x) without external libraries."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for name, pts in series.items():
            pts = sorted(pts)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("speedup over dense")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.legend()
        ax.set_title("msagen MSA speedup over dense attention (H100)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        return
    except ImportError:
        pass
    w, h, m = 640, 400, 50
    img = [[255] * (w * 3) for _ in range(h)]
    colors = [(200, 30, 30), (30, 30, 200), (30, 150, 30), (150, 100, 0)]
    allp = [p for pts in series.values() for p in pts]
    if not allp:
        return
    x0, x1 = math.log2(min(p[0] for p in allp)), math.log2(max(p[0] for p in allp)) + 1e-9
    y1 = max(p[1] for p in allp) * 1.1

    def px(x, y, c):
        if 0 <= x < w and 0 <= y < h:
            img[y][3 * x:3 * x + 3] = c

    def text(s, x, y, c=(0, 0, 0)):
        for ch in s:
            bits = FONT.get(ch, FONT[" "])
            for i, bit in enumerate(bits):
                if bit == "1":
                    for dx in range(2):
                        for dy in range(2):
                            px(x + 2 * (i % 3) + dx, y + 2 * (i // 3) + dy, c)
            x += 8

    def to_xy(x, y):
        return (int(m + (math.log2(x) - x0) / (x1 - x0) * (w - 2 * m)), int(h - m - y / y1 * (h - 2 * m)))

    for x in range(m, w - m):
        px(x, h - m, (0, 0, 0))
    for y in range(m, h - m):
        px(m, y, (0, 0, 0))
    for t in range(0, int(y1) + 1, max(1, int(y1) // 5)):
        text(str(t), 10, to_xy(2 ** x0, t)[1] - 4)
    for ci, (name, pts) in enumerate(series.items()):
        pts = sorted(pts)
        c = colors[ci % len(colors)]
        for (xa, ya), (xb, yb) in zip(pts, pts[1:]):
            (ax_, ay), (bx, by) = to_xy(xa, ya), to_xy(xb, yb)
            steps = max(abs(bx - ax_), abs(by - ay), 1)
            for s in range(steps + 1):
                px(ax_ + (bx - ax_) * s // steps, ay + (by - ay) * s // steps, c)
        for x, y in pts:
            cx, cy = to_xy(x, y)
            for dx in range(-2, 3):
                for dy in range(-2, 3):
                    px(cx + dx, cy + dy, c)
            label = f"{x // 1048576}M" if x >= 1048576 else f"{x // 1024}K"
            text(label, cx - 8, h - m + 8)
    raw = b"".join(b"\x00" + bytes(row) for row in img)

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xffffffff)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


# ---------------------------------------------------------------- main

def bench_tuned(tab, n):
    """The tuning database's picks against the built-in defaults."""
    os.environ["MSAGEN_TUNED"] = "0"
    plain = msagen.load(SPEC)
    os.environ.pop("MSAGEN_TUNED")
    tuned = msagen.load(SPEC)
    x = msa_inputs(tuned, n)
    out = torch.empty_like(x["q"])
    lse = torch.empty(n, tuned.heads_q, device="cuda", dtype=torch.float32)
    res = {}
    for name, layer in (("default", plain), ("tuned", tuned)):
        plan = layer.plan([0, n], [0, n])
        res[name] = (median_ms(lambda: plan.dense(x["q"], x["k"], x["v"], out=out, lse=lse)),
                     median_ms(lambda: plan.attention(x["qi"], x["ki"], x["q"], x["k"], x["v"], out=out, lse=lse)))
        del plan
    size = f"{n // 1024}K"
    for i, what in enumerate(("dense", "whole MSA prefill")):
        tab.add("tuned", f"{what}, default variant", size, res["default"][i], "")
        tab.add("tuned", f"{what}, tuned variant", size, res["tuned"][i], "", "default", res["default"][i] / res["tuned"][i])
    plain.close()
    tuned.close()


def bench_fp8_index(tab, n):
    """The fp8 index branch (specs/minimax-m3-fp8.lua) against the bf16 one."""
    res = {}
    for name, spec, dt in (("bf16", SPEC, torch.bfloat16),
                           ("fp8 e4m3", os.path.join(HERE, "..", "specs", "minimax-m3-fp8.lua"),
                            torch.float8_e4m3fn)):
        layer = msagen.load(spec)
        qi = rand(n, layer.heads_kv, layer.index_dim).to(dt)
        ki = rand(n, layer.index_dim).to(dt)
        plan = layer.plan([0, n], [0, n])
        ids = torch.empty(layer.heads_kv, n, layer.topk, device="cuda", dtype=torch.int32)
        res[name] = median_ms(lambda: plan.index_topk(qi, ki, out=ids), reps=5 if n <= 32768 else 3)
        del plan
        layer.close()
    flops = 2 * 128 * 4 * causal_pairs(n, n)
    size = f"{n // 1024}K"
    tab.add("fp8idx", "index + fused top-k, bf16", size, res["bf16"], f"{flops / res['bf16'] / 1e9:.0f} TFLOP/s")
    tab.add("fp8idx", "index + fused top-k, fp8 e4m3", size, res["fp8 e4m3"],
            f"{flops / res['fp8 e4m3'] / 1e9:.0f} TFLOP/s", "bf16", res["bf16"] / res["fp8 e4m3"])


def splice(results_path, md):
    """Replace the section between the markers in RESULTS.md."""
    begin, end = "<!-- compare.py begin -->", "<!-- compare.py end -->"
    text = open(results_path).read() if os.path.exists(results_path) else "# Results\n"
    block = f"{begin}\n{md}\n![speedup against context length](speedup.png)\n\n{end}\n"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    open(results_path, "w").write(text)


def command_line(argv):
    """The run's arguments as one would type them, the output folder as OUT."""
    out, skip = [], False
    for a in argv:
        if skip:
            out.append("OUT")
            skip = False
        elif a == "--out":
            out.append(a)
            skip = True
        elif a.startswith("--out="):
            out.append("--out OUT")
        else:
            out.append(a)
    return " ".join(out)


def guarded(tab, label, fn, *args):
    """Run one measurement; a failure becomes a note in the table, so one
    broken stage does not cost the rest of the run.  Returns fn's result."""
    try:
        return fn(*args)
    except Exception as e:
        tab.note(f"{label} failed: {type(e).__name__}: {str(e)[:200]}")
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench-out", help="directory for compare.md and speedup.png")
    ap.add_argument("--results", help="RESULTS.md to splice the table into")
    ap.add_argument("--quick", action="store_true", help="8K and 32K only (a smoke run)")
    ap.add_argument("--skip", default="", help="comma list of stages to skip: dense,topk,flex,msa,decode,tuned,fp8idx")
    ap.add_argument("--only", default="", help="comma list of the only stages to run")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    if args.only:
        skip = {"dense", "topk", "flex", "msa", "decode", "tuned", "fp8idx"} - set(args.only.split(","))
    torch.manual_seed(int(time.time()))
    layer = msagen.load(SPEC)
    dev = torch.cuda.get_device_name()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"## compare.py: msagen vs the baselines\n\n{dev}, torch {torch.__version__}, {when}.\n"
              f"Command: `python3 bench/compare.py {command_line(sys.argv[1:])}`. "
              f"MiniMax-M3 layer (Hq 64, Hkv 4, D 128, Di 128, Bk 128, k 16, bf16). Rates against the "
              f"measured ceilings: {CEIL_TFLOPS:.0f} TFLOP/s bf16, {CEIL_TBS:.1f} TB/s copy.")
    tab = Table(os.path.join(args.out, "compare.md"), header)
    print(f"device {dev}, torch {torch.__version__}, {when}", flush=True)
    sizes = [8192, 32768] if args.quick else [8192, 32768, 131072]
    results = {}
    for n in sizes:
        dense_ms = None
        if "dense" not in skip:
            dense_ms = guarded(tab, f"dense {n}", bench_dense, tab, layer, n, results)
            guarded(tab, f"dense {n} non-causal", bench_dense, tab, layer, n, results, False)
        if "topk" not in skip:
            guarded(tab, f"topk {n}", bench_topk, tab, layer, n)
        if "msa" not in skip:
            got = guarded(tab, f"msa {n}", bench_msa, tab, layer, n, results, dense_ms)
            if got and "flex" not in skip and n <= 32768:
                guarded(tab, f"FlexAttention {n}", bench_flex, tab, layer, n, *got)
            del got
        torch.cuda.empty_cache()
    if not args.quick and "msa" not in skip:
        n = 1 << 20
        d128 = results.get("dense_cudnn", {}).get(131072)
        d1m = d128 * 64 if d128 else None  # causal dense grows as n^2
        if d1m:
            tab.note(f"dense cuDNN at 1M is extrapolated: {d128:.1f} ms at 128K x 64 = {d1m:.0f} ms")
        guarded(tab, "msa 1M", bench_msa, tab, layer, n, results, d1m)
        torch.cuda.empty_cache()
    if "fp8idx" not in skip:
        for n in sizes:
            guarded(tab, f"fp8 index {n}", bench_fp8_index, tab, n)
    if "tuned" not in skip:
        for n in sizes:
            guarded(tab, f"tuned {n}", bench_tuned, tab, n)
    if "decode" not in skip:
        f8 = msagen.load(os.path.join(HERE, "..", "specs", "minimax-m3-fp8index.lua"))
        for batch in (1, 8, 32, 128):
            for ctx in (8192, 131072, 1 << 20):
                if batch * ctx > (16 << 20) or (args.quick and ctx > 131072):
                    continue
                guarded(tab, f"decode b{batch} {ctx}", bench_decode, tab, layer, batch, ctx, results)
                if ctx >= 131072 and batch >= 8:
                    guarded(tab, f"decode b{batch} {ctx} fp8 index", bench_decode, tab, f8, batch, ctx,
                            results, 1, True)
                if ctx == 131072 and batch <= 32:
                    guarded(tab, f"decode b{batch} q8 {ctx}", bench_decode, tab, layer, batch, ctx,
                            results, 8)
                torch.cuda.empty_cache()
    series = {}
    for n, t in results.get("msa", {}).items():
        dn = results.get("dense_cudnn", {}).get(n) or (results.get("dense_cudnn", {}).get(131072, 0) * (n / 131072) ** 2)
        if dn:
            series.setdefault("MSA prefill vs dense cuDNN", []).append((n, dn / t))
    for n, (t, dn) in results.get("msa_turns", {}).items():
        series.setdefault("MSA prefill vs dense cuDNN, in turns", []).append((n, dn / t))
    for (b, ctx), sp in results.get("decode", {}).items():
        if b in (1, 8):
            series.setdefault(f"MSA decode b{b} vs dense decode", []).append((ctx, sp))
    write_png(os.path.join(args.out, "speedup.png"), series)
    md = tab.markdown(header)
    open(os.path.join(args.out, "compare.md"), "w").write(md)
    if args.results:
        splice(args.results, md)
    print("wrote", os.path.join(args.out, "compare.md"), "and speedup.png")


if __name__ == "__main__":
    main()

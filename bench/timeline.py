#!/usr/bin/env python3
"""Kernel timeline of MSA decode replayed from a CUDA graph: one graph of
10 calls is replayed for a warm-up period, then once under torch.profiler
(CUPTI); for the calls in the middle of the replay it prints each kernel's
duration and the gap before it, then the per-call time of the replay.

    python3 bench/timeline.py [--spec FILE] [--shapes 1x1048576,8x131072] [--calls 10]
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from compare import SPEC, paged_decode  # noqa: E402  (puts python/ on the path)

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import msagen  # noqa: E402


def timeline(x, calls, settle_s=0.1):
    """The msa_* kernel events of one replay of a graph of `calls` calls."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        x.run()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            x.run()
    t0 = time.time()
    while time.time() - t0 < settle_s:
        g.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        g.replay()
        torch.cuda.synchronize()
    del g
    ev = [e for e in prof.events() if e.device_type.name == "CUDA" and "msa_" in e.name]
    return sorted(ev, key=lambda e: e.time_range.start)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default=SPEC, help="layer spec (default: MiniMax-M3)")
    ap.add_argument("--shapes", default="1x1048576,8x131072", help="comma list of BATCHxCONTEXT")
    ap.add_argument("--calls", type=int, default=10, help="decode calls in the graph")
    args = ap.parse_args()
    layer = msagen.load(args.spec)
    for shape in args.shapes.split(","):
        batch, ctx = (int(v) for v in shape.split("x"))
        x = paged_decode(layer, batch, ctx, idt=layer.dtypes["index"])
        ev = timeline(x, args.calls)
        per = len(ev) // args.calls
        print(f"== {os.path.basename(args.spec)} b{batch} {ctx // 1024}K: {len(ev)} kernels, {per} a call")
        mid = args.calls // 2 * per
        prev = None
        for e in ev[mid - per: mid + per]:
            s, t = e.time_range.start, e.time_range.end
            gap = s - prev if prev is not None else 0.0
            print(f"  {e.name.split('(')[0][:24]:24s} {t - s:8.1f} us  (gap before {gap:5.1f} us)")
            prev = t
        span = ev[-1].time_range.end - ev[0].time_range.start
        print(f"  {args.calls} calls in {span:.1f} us: {span / args.calls:.1f} us a call", flush=True)
        x.plan.close()
        del x


if __name__ == "__main__":
    main()

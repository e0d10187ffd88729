#!/usr/bin/env python3
"""The index branch alone: block scores to memory, and fused with top-k,
bf16 and fp8 e4m3 index tensors, causal, one request of N tokens (the
MiniMax-M3 layer).  One line per (kind, N) with the median time and
TFLOP/s, counting 2 x Di x Hi per causal (query, key) pair as compare.py
does.  For an A/B of two builds on one card, run it once per build in
turns, each with MSAGEN_LIB pointing at that build's libmsagen.so; --tag
names the build in the lines.

    python3 bench/index_ab.py [--sizes 32768,131072] [--tag new] [--reps 7]
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from compare import SPEC, causal_pairs, median_ms, rand  # noqa: E402  (puts python/ on the path)
import torch  # noqa: E402

import msagen  # noqa: E402

FP8_SPEC = os.path.join(HERE, "..", "specs", "minimax-m3-fp8.lua")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="32768,131072", help="comma list of token counts")
    ap.add_argument("--tag", default=os.environ.get("MSAGEN_LIB", "this build"), help="build name in the lines")
    ap.add_argument("--reps", type=int, default=7, help="timed runs per kernel (median)")
    ap.add_argument("--kinds", default="scores,topk,fp8 topk", help="comma list of: scores, topk, fp8 topk")
    ap.add_argument("--spec", default=SPEC, help="bf16 layer spec (default: MiniMax-M3)")
    ap.add_argument("--fp8-spec", default=FP8_SPEC, help="fp8 index layer spec")
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    for n in (int(x) for x in args.sizes.split(",")):
        for kind in kinds:
            fp8 = kind.startswith("fp8")
            layer = msagen.load(args.fp8_spec if fp8 else args.spec)
            hi, di = layer.heads_kv, layer.index_dim
            qi, ki = rand(n, hi, di), rand(n, di)
            if fp8:
                qi, ki = qi.to(torch.float8_e4m3fn), ki.to(torch.float8_e4m3fn)
            plan = layer.plan([0, n], [0, n])
            if kind.endswith("scores"):
                out = torch.empty(hi, n, plan.nb_max, device="cuda", dtype=torch.float32)
                fn = lambda: plan.index_scores(qi, ki, out=out)  # noqa: E731
            else:
                out = torch.empty(hi, n, layer.topk, device="cuda", dtype=torch.int32)
                fn = lambda: plan.index_topk(qi, ki, out=out)  # noqa: E731
            ms = median_ms(fn, reps=args.reps)
            tf = 2 * di * hi * causal_pairs(n, n) / ms / 1e9
            print(f"index {kind:9s} {n // 1024:4d}K {args.tag}: {ms:8.3f} ms {tf:6.0f} TFLOP/s", flush=True)
            del plan, out
            layer.close()


if __name__ == "__main__":
    main()

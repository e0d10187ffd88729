#!/usr/bin/env python3
"""MSA decode alone (index split + top-k + sparse + combine over a paged
cache, the MiniMax-M3 layer), eager and replayed from a CUDA graph, one
line per shape with the median per-call time and the share of the copy
bandwidth on the bytes decode must read (compare.py's count).  For an A/B
of two builds or settings on one card, run it once per variant in turns;
--tag names the variant in the lines (default: MSAGEN_LIB).

    python3 bench/decode_ab.py [--shapes 1x8192,1x131072,8x131072] [--tag new]
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from compare import CEIL_TBS, SPEC, graph_ms, median_ms, rand  # noqa: E402  (puts python/ on the path)
import torch  # noqa: E402

import msagen  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="1x8192,1x131072,1x1048576,8x8192,8x131072",
                    help="comma list of BATCHxCONTEXT")
    ap.add_argument("--tag", default=os.environ.get("MSAGEN_LIB", "this build"), help="variant name in the lines")
    ap.add_argument("--spec", default=SPEC, help="layer spec (default: MiniMax-M3)")
    args = ap.parse_args()
    layer = msagen.load(args.spec)
    hq, hkv, d, di, bk = layer.heads_q, layer.heads_kv, layer.head_dim, layer.index_dim, layer.block
    for shape in args.shapes.split(","):
        batch, ctx = (int(x) for x in shape.split("x"))
        per = (ctx + bk - 1) // bk
        pages = batch * per
        k_pages, v_pages, ki_pages = rand(pages, hkv, bk, d), rand(pages, hkv, bk, d), rand(pages, bk, di)
        table = torch.randperm(pages, device="cuda", dtype=torch.int32).view(batch, per)
        plan = layer.plan(list(range(batch + 1)), [i * ctx for i in range(batch + 1)], page_table=table.cpu(),
                          num_pages=pages)
        q, qi = rand(batch, hq, d), rand(batch, hkv, di)
        out = torch.empty_like(q)
        lse = torch.empty(batch, hq, device="cuda", dtype=torch.float32)
        msa = lambda: plan.attention(qi, ki_pages, q, k_pages, v_pages, out=out, lse=lse)  # noqa: E731
        eager, graph = median_ms(msa, reps=7), graph_ms(msa)
        ids = plan.index_topk(qi, ki_pages)
        srt = ids.view(hkv, batch, -1).sort(-1).values
        distinct = int(((srt[..., 1:] != srt[..., :-1]) & (srt[..., 1:] >= 0)).sum() + (srt[..., 0] >= 0).sum())
        nbytes = distinct * bk * d * 2 * 2 + batch * ctx * di * ki_pages.element_size()
        print(f"decode b{batch} {ctx // 1024}K [{args.tag}]: eager {eager * 1e3:.1f} us, graph {graph * 1e3:.1f} us "
              f"({nbytes / graph / 1e6 / (CEIL_TBS * 1e3) * 100:.0f}% of copy)", flush=True)
        del k_pages, v_pages, ki_pages, plan


if __name__ == "__main__":
    main()

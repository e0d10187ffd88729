#!/usr/bin/env python3
"""MSA decode alone (index split + top-k + sparse + combine over a paged
cache, the MiniMax-M3 layer), eager and replayed from a CUDA graph, one
line per shape with the median per-call time and the share of the copy
bandwidth on the bytes decode must read (compare.py's count).  For an A/B
of two builds or settings on one card, run it once per variant in turns;
--tag names the variant in the lines (default: MSAGEN_LIB).

    python3 bench/decode_ab.py [--shapes 1x8192,1x131072,8x131072] [--tag new] [--nsplit 0,16,32]
                               [--settle 0.05] [--repeat 1]

--settle is graph_ms's warm-up replay period in seconds (0: time the
first replays, as before 873da4e); --repeat times the graph that many
times after the eager timing, each its own capture.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from compare import CEIL_TBS, SPEC, decode_bytes, graph_ms, median_ms, paged_decode  # noqa: E402  (puts python/ on the path)

import msagen  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="1x8192,1x131072,1x1048576,8x8192,8x131072",
                    help="comma list of BATCHxCONTEXT")
    ap.add_argument("--tag", default=os.environ.get("MSAGEN_LIB", "this build"), help="variant name in the lines")
    ap.add_argument("--spec", default=SPEC, help="layer spec (default: MiniMax-M3)")
    ap.add_argument("--nsplit", default="0", help="comma list of split counts to run each shape with (0: the plan's)")
    ap.add_argument("--settle", type=float, default=0.05, help="graph warm-up replay period, seconds")
    ap.add_argument("--repeat", type=int, default=1, help="graph timings per shape")
    args = ap.parse_args()
    layer = msagen.load(args.spec)
    for shape in args.shapes.split(","):
        batch, ctx = (int(x) for x in shape.split("x"))
        for ns in (int(n) for n in args.nsplit.split(",")):
            x = paged_decode(layer, batch, ctx, idt=layer.dtypes["index"], nsplit=ns)
            eager = median_ms(x.run, reps=7)
            graphs = [graph_ms(x.run, settle_s=args.settle) for _ in range(args.repeat)]
            nbytes = sum(decode_bytes(layer, x, batch, ctx))
            shown = ", ".join(f"{g * 1e3:.1f}" for g in graphs)
            print(f"decode b{batch} {ctx // 1024}K [{args.tag}, {x.plan.nsplit} splits]: eager {eager * 1e3:.1f} us, "
                  f"graph {shown} us ({nbytes / graphs[-1] / 1e6 / (CEIL_TBS * 1e3) * 100:.0f}% of copy)",
                  flush=True)
            x.plan.close()
            del x


if __name__ == "__main__":
    main()

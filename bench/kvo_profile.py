"""Where the KV-outer sparse attention spends its time: per-kernel GPU
times (torch.profiler) of one msa sparse call, for several workspace sizes.

    python3 bench/kvo_profile.py [--tokens 32768,131072] [--ws-mib 256,1024,4096]
"""
import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import msagen  # noqa: E402
from compare import SPEC, median_ms, msa_inputs  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="32768,131072")
    ap.add_argument("--ws-mib", default="256,1024,4096")
    args = ap.parse_args()
    layer = msagen.load(SPEC)
    for n in [int(x) for x in args.tokens.split(",")]:
        x = msa_inputs(layer, n)
        plan = layer.plan([0, n], [0, n])
        ids = torch.empty(layer.heads_kv, n, layer.topk, device="cuda", dtype=torch.int32)
        plan.index_topk(x["qi"], x["ki"], out=ids)
        out = torch.empty_like(x["q"])
        lse = torch.empty(n, layer.heads_q, device="cuda", dtype=torch.float32)
        for ws in [int(m) for m in args.ws_mib.split(",")]:
            p2 = layer.plan([0, n], [0, n], sparse_mode=2, kvo_workspace=ws << 20)
            run = lambda: p2.sparse(x["q"], x["k"], x["v"], ids, out=out, lse=lse)  # noqa: E731
            ms = median_ms(run, reps=3)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                run()
                torch.cuda.synchronize()
            per = collections.defaultdict(lambda: [0.0, 0])
            for e in prof.events():
                if e.device_type.name == "CUDA":
                    per[e.name][0] += e.device_time_total / 1000 if hasattr(e, "device_time_total") else e.cuda_time_total / 1000
                    per[e.name][1] += 1
            parts = ", ".join(f"{k.split('(')[0]} {v[0]:.2f} ms/{v[1]}" for k, v in sorted(per.items(), key=lambda kv: -kv[1][0])[:6])
            print(f"{n // 1024}K ws {ws} MiB: {ms:.2f} ms | {parts}", flush=True)
            del p2


if __name__ == "__main__":
    main()

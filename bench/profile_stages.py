"""Where the time goes: per-kernel GPU times (torch.profiler) of one call of
the MSA prefill (index + top-k, gather, KV-outer sparse, combine) and of MSA
decode, on random inputs as in compare.py.

    python3 bench/profile_stages.py [--prefill 32768,131072] [--ws-mib 1024[,4096...]]
                                    [--decode 1x1048576,8x131072,32x131072] [--spec FILE]
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
from compare import SPEC, median_ms, msa_inputs, paged_decode  # noqa: E402


def kernels(fn, top=7):
    """fn's GPU kernels, longest total first: 'name ms/launches'."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    per = collections.defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if e.device_type.name == "CUDA":
            per[e.name.split("(")[0]][0] += getattr(e, "device_time_total", 0) / 1000
            per[e.name.split("(")[0]][1] += 1
    rows = sorted(per.items(), key=lambda kv: -kv[1][0])[:top]
    return ", ".join(f"{k} {v[0]:.3f} ms/{v[1]}" for k, v in rows)


def prefill(layer, n, ws_list, rounds):
    """One set of inputs; each workspace size in turns, `rounds` times (0 MiB:
    the plan's default)."""
    x = msa_inputs(layer, n)
    out = torch.empty_like(x["q"])
    lse = torch.empty(n, layer.heads_q, device="cuda", dtype=torch.float32)
    for _ in range(rounds):
        for ws_mib in ws_list:
            plan = layer.plan([0, n], [0, n], kvo_workspace=ws_mib << 20)
            run = lambda: plan.attention(x["qi"], x["ki"], x["q"], x["k"], x["v"], out=out, lse=lse)  # noqa: E731
            ws = f"{ws_mib} MiB" if ws_mib else "default"
            print(f"prefill {n // 1024}K (workspace {ws}): {median_ms(run, reps=3):.2f} ms | {kernels(run)}",
                  flush=True)
            plan.close()


def decode(layer, batch, ctx):
    run = paged_decode(layer, batch, ctx, idt=layer.dtypes["index"]).run
    print(f"decode b{batch} {ctx // 1024}K: {median_ms(run, reps=7):.3f} ms | {kernels(run)}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefill", default="32768,131072", help="token counts ('' for none)")
    ap.add_argument("--ws-mib", default="0", help="KV-outer workspace per pass, MiB (list: in turns; 0: default)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds over the --ws-mib list")
    ap.add_argument("--decode", default="1x1048576,8x131072,32x131072", help="BATCHxCONTEXT list ('' for none)")
    ap.add_argument("--spec", default=SPEC, help="layer spec (default: MiniMax-M3)")
    args = ap.parse_args()
    layer = msagen.load(args.spec)
    for n in filter(None, args.prefill.split(",")):
        prefill(layer, int(n), [int(w) for w in args.ws_mib.split(",")], args.rounds)
    for bc in filter(None, args.decode.split(",")):
        b, c = bc.split("x")
        decode(layer, int(b), int(c))


if __name__ == "__main__":
    main()

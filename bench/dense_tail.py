#!/usr/bin/env python3
"""Dense non-causal attention with and without the split tail
(MSAGEN_DENSE_TAIL=off), in turns with torch SDPA's cuDNN backend, on one
request of each size (MiniMax-M3 heads: 64 q, 4 kv, head dim 128).

    python3 bench/dense_tail.py [--sizes 8192,16384,32768] [--rounds 15]
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from compare import SPEC, interleaved_ms, rand, sdpa, sdpa_layout  # noqa: E402  (puts python/ on the path)

import torch  # noqa: E402

import msagen  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="8192,16384,32768")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--causal", action="store_true", help="causal instead (the tail never splits)")
    a = ap.parse_args()
    layer = msagen.load(SPEC)
    hq, hkv, d = layer.heads_q, layer.heads_kv, layer.head_dim
    print(f"{torch.cuda.get_device_name()}, {'causal' if a.causal else 'non-causal'}, median of {a.rounds} turns")
    for n in (int(x) for x in a.sizes.split(",")):
        q, k, v = rand(n, hq, d), rand(n, hkv, d), rand(n, hkv, d)
        plan = layer.dense_plan([0, n], [0, n], a.causal)
        out = torch.empty_like(q)
        lse = torch.empty(n, hq, device="cuda", dtype=torch.float32)
        qt, kt, vt = sdpa_layout(q, k, v)

        def run(tail):
            if tail:
                os.environ.pop("MSAGEN_DENSE_TAIL", None)
            else:
                os.environ["MSAGEN_DENSE_TAIL"] = "off"
            plan.run(q, k, v, out=out, lse=lse)

        fns = {"split tail": lambda: run(True), "no split": lambda: run(False),
               "cudnn": lambda: sdpa("cudnn", qt, kt, vt, a.causal)}
        # the two msagen variants and cuDNN agree
        run(True)
        o1 = out.clone()
        run(False)
        ref = sdpa("cudnn", qt, kt, vt, a.causal)[0].transpose(0, 1).float()
        err = max((o1.float() - ref).abs().max().item(), (out.float() - ref).abs().max().item())
        got = interleaved_ms(fns, rounds=a.rounds)
        flops = 4 * d * hq * (n * (n + 1) // 2 if a.causal else n * n)
        row = ", ".join(f"{name} {ms:.3f} ms ({flops / ms / 1e9:.0f} TFLOP/s)" for name, ms in got.items())
        print(f"{n // 1024}K: {row}; split/cuDNN {got['cudnn'] / got['split tail']:.3f}x, "
              f"no split/cuDNN {got['cudnn'] / got['no split']:.3f}x; max |msagen - cuDNN| {err:.2e}",
              flush=True)
        plan.close()
    os.environ.pop("MSAGEN_DENSE_TAIL", None)


if __name__ == "__main__":
    main()

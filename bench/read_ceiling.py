#!/usr/bin/env python3
"""The read bandwidth a kernel can reach when it streams pages, as the
decode index kernel does: a Triton kernel with one program per page reads
the page (the page table shuffled, or in order) and reduces it; torch.amax
and a device copy over the same bytes for reference.  Each line is the
median of 15 event-timed launches after 100 warm-up launches.

    python3 bench/read_ceiling.py [--pages 32x32768,32x8192,16x8192]

--pages is a comma list of PAGE_KBxCOUNT; the default covers the decode
cells: 8192 pages of 32 KB (bf16 index keys, 1M tokens), 8192 of 16 KB
(fp8 index keys, 8 x 128K tokens) and 1 GiB of 32 KB pages.
"""
import argparse
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import median_ms  # noqa: E402


@triton.jit
def page_read(src, table, out, PAGE: tl.constexpr, SUB: tl.constexpr):
    pid = tl.program_id(0)
    base = src + tl.load(table + pid).to(tl.int64) * PAGE
    acc = tl.zeros([SUB], dtype=tl.int32)
    for i in tl.static_range(0, PAGE, SUB):
        acc += tl.load(base + i + tl.arange(0, SUB))
    tl.store(out + pid, tl.sum(acc))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", default="32x32768,32x8192,16x8192", help="comma list of PAGE_KBxCOUNT")
    args = ap.parse_args()
    print(torch.cuda.get_device_name())
    for spec in args.pages.split(","):
        kb, pages = (int(x) for x in spec.split("x"))
        words = kb * 256  # int32 words a page
        src = torch.randint(-2**30, 2**30, (pages * words,), device="cuda", dtype=torch.int32)
        out = torch.empty(pages, device="cuda", dtype=torch.int32)
        nbytes = src.numel() * 4
        what = f"{pages} pages of {kb} KB ({nbytes / 1e6:.0f} MB)"
        for order in ("shuffled", "in order"):
            perm = torch.randperm(pages, device="cuda") if order == "shuffled" else torch.arange(pages, device="cuda")
            table = perm.to(torch.int32)
            for sub, nw in ((1024, 4), (2048, 8), (4096, 8)):
                if sub > words:
                    continue
                ms = median_ms(lambda: page_read[(pages,)](src, table, out, PAGE=words, SUB=sub, num_warps=nw),
                               warmup=100, reps=15)
                print(f"{what}, {order}, {sub} words x {nw} warps a step: {ms * 1e3:.1f} us, "
                      f"{nbytes / ms / 1e9:.2f} TB/s", flush=True)
        ms = median_ms(lambda: torch.amax(src), warmup=100, reps=15)
        print(f"{what}: torch.amax {ms * 1e3:.1f} us, {nbytes / ms / 1e9:.2f} TB/s")
        dst = torch.empty_like(src)
        ms = median_ms(lambda: dst.copy_(src), warmup=100, reps=15)
        print(f"{what}: copy {ms * 1e3:.1f} us, {2 * nbytes / ms / 1e9:.2f} TB/s (read + write)", flush=True)


if __name__ == "__main__":
    main()

// topk.cuh - the top-k selection rule of MSA.md section 2, shared by the
// fused index kernel (index_topk.cu) and the standalone top-k (topk.cu).
//
// Order of candidates: score descending, then block id ascending; a NaN
// score ranks as -inf.  With S = MSA_SINK sinks and L = MSA_LOCAL (0 or 1)
// forced local block, a row with n visible blocks ranks the candidates
// S .. n-1-L and keeps the best KP = MSA_TOPK - S - L of them.
#pragma once
#include "common.cuh"

#define MSA_KP (MSA_TOPK - MSA_SINK - MSA_LOCAL)
// KP can be 0 (every slot forced); arrays are sized with at least 1.
#define MSA_KP_ALLOC (MSA_KP > 0 ? MSA_KP : 1)

static_assert(MSA_TOPK >= 1, "topk: MSA_TOPK >= 1");
static_assert(MSA_LOCAL == 0 || MSA_LOCAL == 1, "topk: MSA_LOCAL is 0 or 1");
static_assert(MSA_SINK >= 0 && MSA_KP >= 0, "topk: MSA_SINK + MSA_LOCAL <= MSA_TOPK");
static_assert(MSA_BLOCK > 0, "topk: MSA_BLOCK > 0");

// NaN -> -inf (bit test: immune to fast-math).
__device__ __forceinline__ float topk_rank(float s)
{
	return (__float_as_uint(s) & 0x7fffffffu) > 0x7f800000u ? -MSA_INF : s;
}

// A score as an int with the same order: key(a) > key(b) iff a > b as
// floats, -0 and +0 equal, NaN as -inf; every key is above TOPK_KEY_NONE,
// which can mark an empty list slot.
#define TOPK_KEY_NONE ((int)0x80000000)
__device__ __forceinline__ int topk_key(float s)
{
	int i = __float_as_int(topk_rank(s));
	i = i == (int)0x80000000 ? 0 : i;
	return i ^ ((i >> 31) & 0x7fffffff);
}

// Does candidate (s, b) come strictly before (es, eb) in the order?  Scores
// must already have gone through topk_rank.
__device__ __forceinline__ bool topk_beats(float s, int b, float es, int eb)
{
	return s > es || (s == es && b < eb);
}

// The warp's best (score, id) in the order above, in every lane.
__device__ __forceinline__ void warp_best(float &bs, int &bid)
{
#pragma unroll
	for (int off = 16; off >= 1; off /= 2) {
		float os = __shfl_xor_sync(0xffffffffu, bs, off);
		int oid = __shfl_xor_sync(0xffffffffu, bid, off);
		if (topk_beats(os, oid, bs, bid)) {
			bs = os;
			bid = oid;
		}
	}
}

// Visible blocks of a query at absolute position p (bottom-right causal).
__device__ __forceinline__ int topk_visible_blocks(int p)
{
	return p < 0 ? 0 : p / MSA_BLOCK + 1;
}

// Write slots first, first+step, ... < MSA_TOPK of one output row dst
// (MSA_TOPK ints) for a row with n visible blocks, exactly as ref_topk_row:
//  - n <= MSA_TOPK: blocks 0..n-1 ascending, then -1;
//  - else sinks 0..S-1 in slots 0..S-1, ranked(j) (the id of the j-th best
//    candidate, j < MSA_KP) in slots S..TOPK-1-L, and with L = 1 the local
//    block n-1 in slot TOPK-1.
// ranked is called only when n > MSA_TOPK (then n-S-L > KP candidates
// exist, so a full ranked list is always available).
template <typename F>
__device__ __forceinline__ void write_row_ids(int *dst, int n, F ranked, int first, int step)
{
	for (int s = first; s < MSA_TOPK; s += step) {
		int v;
		if (n <= MSA_TOPK)
			v = s < n ? s : -1;
		else if (s < MSA_SINK)
			v = s;
		else if (MSA_LOCAL && s == MSA_TOPK - 1)
			v = n - 1;
		else
			v = ranked(s - MSA_SINK);
		dst[s] = v;
	}
}

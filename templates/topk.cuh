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

// Split top-k (decode): each of ksplit CTAs keeps the top KP of its share
// of a row's blocks as a list of (key, id) in split_ws; split_merge_row
// merges them (the index kernel's last CTA, or each sparse_fwd CTA).
// A list entry as one unsigned number in the selection order (larger
// first: key descending, then block id ascending); 0 is an empty slot.
__device__ __forceinline__ u64 split_pack(int key, int id)
{
	return key == TOPK_KEY_NONE ? 0ull : ((u64)((u32)key ^ 0x80000000u) << 32) | (u32)~id;
}

#define SPLIT_HL 4	// lists per lane: ksplit <= 128
#define SPLIT_LS ((MSA_KP_ALLOC + 1) & ~1)	// a list's stride, entries
#define SPLIT_CAP (4 * MSA_KP_ALLOC * MSA_KP_ALLOC)	// gathered entries of a row, at most
// One warp merges the ksplit (<= 128) sorted lists c[ksplit][SPLIT_LS]
// (int2 key, id; the first KP used, KP <= 16) of a row with n visible
// blocks into its ids dst.  Lane l holds the heads of lists l, l + 32, ...;
// t, the KP-th best of the lanes' best heads, bounds the merged KP-th entry
// from below (KP distinct entries reach it), so only entries >= t compete,
// from the lists (<= 4 KP, of the KP lanes whose best reaches t) whose head
// is >= t.  Their entries come in with a lane per entry, every load of a
// round in flight at once (the lists come from L2), the ones >= t go to
// buf (<= SPLIT_CAP) and are ranked.  ql: 128 list ids.  ld(i) reads
// entry i of c (list l's entry x at l * SPLIT_LS + x), from global memory
// through L2 or from a copy in shared memory.
// split_rank_row does all but the write: rank[0..KP-1] gets the merged
// list's ids (as many as the lists hold).  It does not need n, so a caller
// may rank before it knows the row's request; split_merge_row adds the
// write of dst.
template <typename Ld>
__device__ __forceinline__ void split_rank_row(Ld ld, int ksplit, u64 *buf, int *ql, int *rank, int lane)
{
	if (MSA_KP > 0) {
		u64 h[SPLIT_HL], lb = 0;
#pragma unroll
		for (int j = 0; j < SPLIT_HL; j++) {
			const int l = lane + 32 * j;
			const int2 e = l < ksplit ? ld((size_t)l * SPLIT_LS) : make_int2(TOPK_KEY_NONE, -1);
			h[j] = split_pack(e.x, e.y);
			lb = h[j] > lb ? h[j] : lb;
		}
		int cnt = 0;	// lb's rank among the lanes' bests (distinct unless 0)
#pragma unroll 8
		for (int src = 0; src < 32; src++)
			cnt += __shfl_sync(0xffffffffu, lb, src) > lb;
		u64 t = 1;	// fewer than KP lanes hold entries: every entry competes
		const unsigned tb = __ballot_sync(0xffffffffu, lb != 0 && cnt == MSA_KP - 1);
		if (tb)
			t = __shfl_sync(0xffffffffu, lb, __ffs(tb) - 1);
		// the lists whose head reaches t, compacted into ql
		int nq = 0;
#pragma unroll
		for (int j = 0; j < SPLIT_HL; j++) {
			const unsigned b = __ballot_sync(0xffffffffu, h[j] >= t);
			if (h[j] >= t)
				ql[nq + __popc(b & ((1u << lane) - 1))] = lane + 32 * j;
			nq += __popc(b);
		}
		__syncwarp();
		// their entries: lane % 16 is the entry, lane / 16 picks of two lists
		int m = 0;
		const int x = lane % 16;
		for (int p0 = 0; p0 < nq; p0 += 16) {
			int2 v[8];
#pragma unroll
			for (int u = 0; u < 8; u++) {
				const int p = p0 + 2 * u + lane / 16;
				v[u] = p < nq && x < MSA_KP ? ld((size_t)ql[p] * SPLIT_LS + x)
							    : make_int2(TOPK_KEY_NONE, -1);
			}
#pragma unroll
			for (int u = 0; u < 8; u++) {
				const u64 e = split_pack(v[u].x, v[u].y);
				const unsigned b = __ballot_sync(0xffffffffu, e >= t);
				if (e >= t)
					buf[m + __popc(b & ((1u << lane) - 1))] = e;
				m += __popc(b);
			}
		}
		__syncwarp();
		for (int i = lane; i < m; i += 32) {
			const u64 v = buf[i];
			int r = 0;
			for (int y = 0; y < m; y++)
				r += buf[y] > v;
			if (r < MSA_KP)
				rank[r] = (int)~(u32)v;
		}
		__syncwarp();
	}
}

template <typename Ld>
__device__ __forceinline__ void split_merge_row(Ld ld, int ksplit, int n, int *dst, u64 *buf, int *ql, int *rank,
						int lane)
{
	if (n > MSA_TOPK)
		split_rank_row(ld, ksplit, buf, ql, rank, lane);
	write_row_ids(dst, n, [&](int j) { return rank[j]; }, lane, 32);
}

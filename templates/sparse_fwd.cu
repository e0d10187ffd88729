// sparse_fwd.cu - the MSA main branch, query-outer: one CTA takes one query
// token and one KV group, packs the group's G query heads into the rows of
// its warps (16 per warp; rows >= G are padding) and folds in the group's
// selected blocks, causal inside them.  With G <= 32 there are too few rows
// to keep four warps busy, so the warps also split each key tile by
// columns (each its own online softmax) and merge at the end.  With
// nsplit > 1 the selected tiles are split over CTAs (decode with few
// queries) and each writes a partial (o, lse) that msa_combine merges.
// With dense = 1 (causal) or 2 (not) it attends to every key instead: the
// decode form of dense attention, split the same way.
// KV is contiguous or paged.
//
// Decode after the split index (lists != null): the index kernel's ksplit
// CTAs of a row left their top-KP lists in split_ws and ended without
// merging them; in every CTA of the row, warp 0 copies them into shared
// memory and ranks them (split_rank_row) while the other warps find the
// request, then writes the row's ids (split 0 also to memory).
#include "attn.cuh"
#include "topk.cuh"

#define D MSA_D
#define BN 64
#define BK MSA_BLOCK
#define K MSA_TOPK
#define RW ((MSA_G + 15) / 16)	// warps along rows
#define CW (RW >= 4 ? 1 : 4 / RW)	// warps along each tile's columns
#define BNW (BN / CW)		// keys per warp per tile
#define NWARPS (RW * CW)
#define NTHREADS (NWARPS * 32)
#define ROWS (RW * 16)
#define ES ELEM_BYTES(MSA_DT_Q)
#define MDT MMA_DT(MSA_DT_Q)
#define SUBS (BK / BN)
#define PTC 1024	// page-table entries kept in shared memory (128K keys with Bk 128)

typedef u8 elem_t;
typedef dtype_traits<MSA_DT_OUT>::T out_t;

static_assert(MSA_DT_Q == MSA_DT_KV, "sparse_fwd: q and kv must have one type");
static_assert(BK % BN == 0, "sparse_fwd: block size is a multiple of 64");
static_assert(NWARPS * 32 * (D / 2 + 4) * 4 <= 4 * BN * D * 2, "sparse_fwd: merge space fits the tiles");
static_assert(MSA_KP > 16 || ((SPLIT_CAP + 128 + MSA_KP_ALLOC) * 8 <= 2 * BN * D * 2 &&
			       128 * SPLIT_LS * 8 <= 2 * BN * D * 2),
	      "sparse_fwd: 128 split lists fit the V tiles and their merge the K tiles");

struct smem_t {
	u16 q[ROWS * D];
	u16 k[2][BN * D];
	u16 v[2][BN * D];
	int pt[PTC];			// the request's page-table row, when it fits
	int tile_start[K * SUBS];	// first key of each tile to visit
	int blk[K];			// the query's selected blocks
	int ntiles;
	int req[4];			// split decode: the request, k0, kv_len, p
};
#ifdef MSA_SMEM_BYTES
static_assert(sizeof(smem_t) <= MSA_SMEM_BYTES, "sparse_fwd: generator's shared-memory size is too small");
#endif

// Fold the column warps' (m, l, o) of each row warp into column warp 0.
// Every warp has the same fragment layout, so values merge position by
// position; the K/V tiles are free by now and hold the exchange.
__device__ __forceinline__ void merge_columns(smem_t &sm, row_state &st, float (&o)[D / 8][4],
					      int rw, int cw, int lane)
{
	float *xo = reinterpret_cast<float *>(sm.k);	// [NWARPS][D/2][32] + [NWARPS][4][32] m, l
	// lane fastest: a warp's stores and loads hit 32 different banks
	float *xm = xo + NWARPS * 32 * (D / 2);
	const int w = cw * RW + rw;
	__syncthreads();	// every warp is done with the tiles
	if (cw != 0) {
#pragma unroll
		for (int j = 0; j < D / 8; j++)
#pragma unroll
			for (int e = 0; e < 4; e++)
				xo[(w * (D / 2) + j * 4 + e) * 32 + lane] = o[j][e];
#pragma unroll
		for (int h = 0; h < 2; h++) {
			xm[(w * 4 + h) * 32 + lane] = st.m[h];
			xm[(w * 4 + 2 + h) * 32 + lane] = st.l[h];
		}
	}
	__syncthreads();
	if (cw != 0)
		return;
	for (int c = 1; c < CW; c++) {
		const int wc = c * RW + rw;
		float a[2], b[2];
#pragma unroll
		for (int h = 0; h < 2; h++) {
			float mc = xm[(wc * 4 + h) * 32 + lane], lc = xm[(wc * 4 + 2 + h) * 32 + lane];
			float m = fmaxf(st.m[h], mc), base = m == -MSA_INF ? 0.f : m;
			a[h] = st.m[h] == -MSA_INF ? 0.f : fast_exp2(st.m[h] - base);
			b[h] = mc == -MSA_INF ? 0.f : fast_exp2(mc - base);
			st.m[h] = m;
			st.l[h] = st.l[h] * a[h] + lc * b[h];
		}
#pragma unroll
		for (int j = 0; j < D / 8; j++)
#pragma unroll
			for (int e = 0; e < 4; e++)
				o[j][e] = o[j][e] * a[e / 2] +
					  xo[(wc * (D / 2) + j * 4 + e) * 32 + lane] * b[e / 2];
	}
}

extern "C" __global__ void __launch_bounds__(NTHREADS)
msa_sparse_fwd(const elem_t *__restrict__ q, const elem_t *__restrict__ k,
	       const elem_t *__restrict__ v, int *__restrict__ ids,
	       const int *__restrict__ cu_q, const int *__restrict__ cu_kv, int batch,
	       const int *__restrict__ page_table, int pt_stride, float scale_log2,
	       float out_scale, int total_q, out_t *__restrict__ out, float *__restrict__ lse,
	       float *__restrict__ part_o, float *__restrict__ part_lse, int dense,
	       const int2 *__restrict__ lists, int ksplit)
{
	extern __shared__ __align__(128) unsigned char smem_raw[];
	smem_t &sm = *reinterpret_cast<smem_t *>(smem_raw);
	const int t = blockIdx.x, g = blockIdx.y, split = blockIdx.z, nsplit = gridDim.z;
	const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
	const int rw = warp % RW, cw = warp / RW;
	// Q, and in decode after the split index the row's lists (into the V
	// tiles, which are not loading yet: one round of 16-byte copies through
	// L2, where the index kernel left them), depend on (t, g) alone.  Warp
	// 0 copies the lists and ranks them while the other warps find the
	// request, its lengths and its page-table row: the ranking does not need
	// them, so the two chains of dependent loads run side by side.
	const size_t qstride = (size_t)MSA_HQ * D * ES;
	const elem_t *qb = q + (size_t)t * qstride + (size_t)g * MSA_G * D * ES;
	int2 *cs = reinterpret_cast<int2 *>(sm.v);
	u64 *buf = reinterpret_cast<u64 *>(sm.k);	// the merge's scratch
	int *ql = reinterpret_cast<int *>(buf + SPLIT_CAP), *rank = ql + 128;
	if (lists && warp == 0) {
		const int2 *src = lists + ((size_t)g * total_q + t) * ksplit * SPLIT_LS;
		for (int i = lane; i < ksplit * SPLIT_LS / 2; i += 32)
			cp_async16(smem_u32(cs + 2 * i), src + 2 * i, 16);
	}
	cp_async_commit();
	tile_load<ROWS, D, NTHREADS, MSA_DT_Q>(sm.q, q, [&](int row) {
		return row < MSA_G ? qb + (size_t)row * D * ES : nullptr;
	});
	cp_async_commit();
	int r = 0, k0 = 0, kv_len = 0, p = 0;
	if (lists && warp == 0) {
		cp_async_wait<1>();	// the lists (Q may still be coming)
		__syncwarp();
		split_rank_row([&](size_t e) { return cs[e]; }, ksplit, buf, ql, rank, lane);
	} else {
		r = find_request_warp(cu_q, batch, t);
		const int q_len = cu_q[r + 1] - cu_q[r];
		k0 = cu_kv[r], kv_len = cu_kv[r + 1] - k0;
		// the last key this query sees (dense == 2: non-causal, every key)
		p = dense == 2 ? kv_len - 1 : kv_len - q_len + (t - cu_q[r]);
		if (lists && threadIdx.x == 32)
			sm.req[0] = r, sm.req[1] = k0, sm.req[2] = kv_len, sm.req[3] = p;
	}
	// A paged request's page-table row (up to PTC pages) comes into shared
	// memory behind them, while the blocks are chosen, so no tile waits on
	// a page-table read.
	const int pt_lo = lists ? 32 : 0;	// the threads that know the request
	if (page_table && pt_stride <= PTC && (int)threadIdx.x >= pt_lo) {
		const int *row = page_table + (size_t)r * pt_stride;
		for (int i = threadIdx.x - pt_lo; i < min(pt_stride, (kv_len + BK - 1) / BK); i += NTHREADS - pt_lo)
			cp_async4(smem_u32(sm.pt + i), row + i);
	}
	cp_async_commit();
	if (lists) {
		__syncthreads();	// the ranks and the request
		r = sm.req[0], k0 = sm.req[1], kv_len = sm.req[2], p = sm.req[3];
		if (warp == 0)
			write_row_ids(sm.blk, topk_visible_blocks(p), [&](int j) { return rank[j]; }, lane, 32);
	} else {
		const int *sel = ids + ((size_t)g * total_q + t) * K;
		for (int s = threadIdx.x; s < K && !dense; s += NTHREADS)
			sm.blk[s] = sel[s];
	}
	const int *pt = !page_table ? nullptr : pt_stride <= PTC ? sm.pt : page_table + (size_t)r * pt_stride;
	// The tiles of the selected blocks: valid, visible, not already chosen
	// by an earlier slot (a repeated block counts once).  Warp 0 takes a
	// slot per lane and places its tiles by a prefix sum.  With nsplit > 1
	// each CTA takes an even share of that list: splits go by tiles, not
	// slots, so a decode query can spread over up to k x Bk / 64 CTAs.
	// Dense attention (dense = 1 or 2, decode) takes every tile up to p
	// instead, in order, with no list.
	__syncthreads();
	if (lists && split == 0)
		for (int s = threadIdx.x; s < K; s += NTHREADS)
			ids[((size_t)g * total_q + t) * K + s] = sm.blk[s];
	if (warp == 0 && !dense) {
		int n = 0;
		for (int c = 0; c < K; c += 32) {
			const int s = c + lane, b = s < K ? sm.blk[s] : -1;
			bool ok = b >= 0 && b * BK <= p && b * BK < kv_len;
			for (int e = 0; ok && e < s; e++)
				ok = sm.blk[e] != b;
			const int cnt = ok ? min(SUBS, (p - b * BK) / BN + 1) : 0;
			int x = cnt;
#pragma unroll
			for (int off = 1; off < 32; off <<= 1) {
				const int y = __shfl_up_sync(0xffffffffu, x, off);
				x += lane >= off ? y : 0;
			}
			for (int sub = 0; sub < cnt; sub++)
				sm.tile_start[n + x - cnt + sub] = b * BK + sub * BN;
			n += __shfl_sync(0xffffffffu, x, 31);
		}
		if (lane == 0)
			sm.ntiles = n;
	}
	cp_async_wait<0>();	// the page-table row
	__syncthreads();
	const int nall = dense ? (min(p, kv_len - 1) + BN) / BN : sm.ntiles;
	const int t0 = split * nall / nsplit, ntiles = (split + 1) * nall / nsplit - t0;
	auto krow = [&](const elem_t *base, int n0) {
		return kv_tile_rows<D, ES, BK>(base, n0, min(p, kv_len - 1) - n0, pt, k0, g);
	};
	auto tstart = [&](int it) { return dense ? (t0 + it) * BN : sm.tile_start[t0 + it]; };
	auto rows = [&](const void *base, int n0) { return krow((const elem_t *)base, n0); };
	attend_prologue<D, BN, NTHREADS, MSA_DT_Q>(sm.k, sm.v, q, k, v, ntiles, tstart, rows);

	u32 qa[D / 16][4];
	load_a_frags<D>(qa, sm.q, rw * 16, lane);
	float o[D / 8][4];
	zero_acc<D>(o);
	row_state st;
	row_state_init(st);
	attend_tiles<D, BN, BNW, NTHREADS, MSA_DT_Q>(
		sm.k, sm.v, q, k, v, ntiles, tstart, rows,
		[&](int n0) { return n0 + cw * BNW + BNW - 1 <= p && n0 + cw * BNW + BNW <= kv_len; },
		[&](int, int j) { return j <= p && j < kv_len; }, cw * BNW, scale_log2, qa, st, o, lane);
	if (CW > 1)
		merge_columns(sm, st, o, rw, cw, lane);
#pragma unroll
	for (int half = 0; half < 2 && cw == 0; half++) {
		float inv;
		const float l = row_finish(st, half, inv);
		const int row = rw * 16 + lane / 4 + half * 8;
		if (row >= MSA_G)
			continue;
		const size_t at = (size_t)t * MSA_HQ + g * MSA_G + row;
		if (nsplit == 1) {
			store_row<D, MSA_DT_OUT>(o, half, inv * out_scale, out + at * D, lane);
			if (lane % 4 == 0)
				lse[at] = l;
		} else {
			const size_t pat = (size_t)split * total_q * MSA_HQ + at;
			store_row_f32<D>(o, half, inv * out_scale, part_o + pat * D, lane);
			if (lane % 4 == 0)
				part_lse[pat] = l;
		}
	}
}

// index_topk90.cu - the index branch fused with top-k (or, with
// MSA_WRITE_SCORES = 1, the block scores alone) for sm_90a.
//
// One CTA takes BM = 64 x NCW rows: BM / Hi consecutive queries of one
// request times the Hi index heads (head fastest: each key tile serves every
// head), and 1 + NCW warpgroups: warpgroup 0 is the producer (one thread
// drives TMA: the Q tile once, then the key blocks through a ring of NST
// stages), warpgroups 1..NCW (tunable `consumers`, 2 or 3) own 64 query rows
// each and overlap a block's top-k with the next block's products (two S
// buffers with 2 consumers; with 3, whose registers hold one, the next
// block is issued once the row maxima are out).  A key tile is one block of
// 128 keys, so one wgmma chain S = Q K^T gives a row's whole block: the
// block score is the max over its visible keys (quad shuffles), then lane %
// 4 == 0 writes it (lane 0 of the quad for the first row, lane 1 for the
// second), or the quad inserts it into the row's streaming top-KP list,
// exactly in the order of index_topk.cu.  The list lives in registers, sorted and spread over the
// quad's four lanes (lane q holds entries q*TR .. q*TR+TR-1): an insertion
// is a few compares and selects per lane and one shuffle, with no shared
// memory and no lane-divergent branch.  CTAs take their query tiles last
// first: the longest (causal) tiles start in the first wave, so the short
// ones fill the tail.  fp8 e4m3 index tensors run natively
// (wgmma k32 on e4m3), so unlike index_topk.cu nothing is widened, and
// their sums accumulate in f16: an S takes 32 registers, so every consumer
// count runs the two-buffer pipeline, and a block max is 15 paired
// max.f16x2 and one fp32 max per row instead of 31 fp32 ones (the fp8
// kernel was bound by that epilogue, not by the tensor cores).  A warp
// whose Q rows could push a sum past 65504 (|q|_1 x 448 >= 60000) checks
// each block's maxima and recomputes a block with a non-finite one in fp32
// (mma.sync), so a score is off by f16 rounding at most, never by an
// overflow.
//
// Split top-k (decode: few rows, long contexts): with ksplit > 1 the fused
// kernel's CTAs of one query tile take ksplit even shares of its blocks;
// each writes its rows' lists (the top KP of its share, in order) to
// split_ws, and the last CTA of the tile to arrive (a ticket per tile,
// reset by that CTA) merges them into the rows' ids, a warp per row
// (split_merge_row).  No score reaches memory and no second kernel runs.
// With ids null the CTAs write their lists and end: in decode, each
// sparse_fwd CTA merges its own row's lists instead, so the index kernel
// ends without the ticket and the last CTA's merge on its critical path.
//
// Launch: grid (ceil(max_q_len / (BM / Hi)) * ksplit, 1, batch), 128 x
// (1 + NCW) threads; tensor maps over qi [total_q, Hi, Di] (3-d, boxes of
// 128 bytes x Hi heads x BM / Hi queries) and ki [rows, Di] (2-d: the
// request's keys, or pages x block rows; boxes of 128 bytes x 128 rows).
#if MSA_DT_INDEX == 1
#define WG_AB "f16.f16"
#else
#define WG_AB "bf16.bf16"
#endif
#include "attn.cuh"
#include "topk.cuh"
#include "hopper.cuh"

#ifndef MSA_WRITE_SCORES
#define MSA_WRITE_SCORES 0
#endif

#ifdef MSA_TUNE_CONSUMERS
#define NCW MSA_TUNE_CONSUMERS	// consumer warpgroups
#else
#define NCW 2
#endif
#define BM (64 * NCW)	// rows per CTA: (query, head) pairs, the head fastest
#define HI MSA_HKV	// index heads
#define QPC (BM / HI)	// queries per CTA
#define BK MSA_BLOCK
#define DI MSA_DI
#define FP8 (MSA_DT_INDEX == 2)
#define ES (FP8 ? 1 : 2)
#define RB (DI * ES)		// bytes per row
#define TBYTES (128 * RB)	// one key tile: 128 rows
#define QBYTES (BM * RB)	// the Q tile
#define NST (RB == 256 ? (NCW == 2 ? 5 : 4) : 8)	// ring stages: the warpgroups may drift apart
#define NT (128 * (1 + NCW))
// Registers: the producer drops to 24, the consumers take MSA_CREGS (the
// generator's share of the launch's pool, 65536 / NT per thread as ptxas
// caps it).
#define TR ((MSA_KP_ALLOC + 3) / 4)	// list entries per quad lane and row

static_assert(BK == 128, "index_topk90: block 128");
static_assert(NCW == 2 || NCW == 3, "index_topk90: 2 or 3 consumer warpgroups");
static_assert(BM % HI == 0, "index_topk90: the index heads must divide the CTA's 64 x consumers rows");
static_assert(24 * 128 + MSA_CREGS * 128 * NCW <= 65536, "index_topk90: register split exceeds the pool");
static_assert(RB == 128 || RB == 256, "index_topk90: rows of 128 or 256 bytes (16-bit Di 64/128, fp8 Di 128)");
#ifdef MSA_SMEM_BYTES
static_assert(1024 + QBYTES + NST * TBYTES + 4 * MSA_KP_ALLOC * BM + 8 * (1 + 2 * NST) <= MSA_SMEM_BYTES,
	      "index_topk90: generator's shared-memory size is too small");
#endif

#ifndef MSA_IDX_ACC16	// 0: fp8 sums in fp32 as well (one S with 3 consumers)
#define MSA_IDX_ACC16 1
#endif
#define ACC16 (FP8 && MSA_IDX_ACC16)
#if ACC16
typedef u32 sbuf_t[32];	// f16 pairs
#else
typedef float sbuf_t[16][4];
#endif

// One k step of S: fp32 sums, or (fp8 only) f16 sums, half the registers
// of fp32, so every consumer count holds two S buffers, and half the max
// instructions.
__device__ __forceinline__ void idx_mma(float (&s)[16][4], u64 da, u64 db, int acc)
{
	if (FP8)
		wgmma_n128_e4m3(&s[0][0], da, db, acc);
	else
		wgmma_n128_ss<0>(&s[0][0], da, db, acc);
}
__device__ __forceinline__ void idx_mma(u32 (&s)[32], u64 da, u64 db, int acc)
{
	wgmma_n128_e4m3_f16(s, da, db, acc);
}

// S (64 rows x 128 keys) = this warpgroup's Q rows x K tile^T.
template <typename SB>
__device__ __forceinline__ void idx_qk(SB &s, u32 a, u32 b)
{
#pragma unroll
	for (int kk = 0; kk < RB / 32; kk++) {
		const u32 off = (kk * 32) % 128, atom = (kk * 32) / 128;
		idx_mma(s, wg_desc(a + atom * (BM * 128) + off, 16, 1024),
			wg_desc(b + atom * (128 * 128) + off, 16, 1024), kk > 0);
	}
}

// This thread's max over its scores of row half hf (rows lane / 4 + 8 hf)
// in an S of NC 8-key chunks starting at key n0, keys past p masked: a tree
// when the whole chunk is visible.
template <int NC>
__device__ __forceinline__ float row_max(const float (&S)[NC][4], int hf, int n0, int p, int lane)
{
	if (n0 + NC * 8 - 1 <= p) {
		float t[NC / 2];
#pragma unroll
		for (int c = 0; c < NC / 2; c++)
			t[c] = fmaxf(fmaxf(S[c][2 * hf], S[c][2 * hf + 1]),
				     fmaxf(S[c + NC / 2][2 * hf], S[c + NC / 2][2 * hf + 1]));
#pragma unroll
		for (int w = NC / 4; w >= 1; w /= 2)
#pragma unroll
			for (int c = 0; c < w; c++)
				t[c] = fmaxf(t[c], t[c + w]);
		return t[0];
	}
	float m = -MSA_INF;
#pragma unroll
	for (int c = 0; c < NC; c++)
#pragma unroll
		for (int e = 0; e < 2; e++)
			if (n0 + c * 8 + 2 * (lane % 4) + e <= p)
				m = fmaxf(m, S[c][2 * hf + e]);
	return m;
}

// The same from f16 accumulators; nf is infinite or NaN when a visible
// score is not finite (a sum past 65504, an overflow in between, or a NaN
// input), and the caller then recomputes the block in fp32 (idx_rows_f32).
template <int NC>
__device__ __forceinline__ float row_max(const u32 (&S)[32], int hf, int n0, int p, int lane, float &nf)
{
	if (n0 + 127 <= p) {
		u32 t[8];
#pragma unroll
		for (int c = 0; c < 8; c++)
			t[c] = hmax2_nan(S[2 * c + hf], S[2 * (c + 8) + hf]);
#pragma unroll
		for (int w = 4; w >= 1; w /= 2)
#pragma unroll
			for (int c = 0; c < w; c++)
				t[c] = hmax2_nan(t[c], t[c + w]);
		const float a = h2f(t[0], 0), b = h2f(t[0], 1);
		nf = fabsf(a) + fabsf(b);	// the tree carried any NaN here
		return fmaxf(a, b);
	}
	float m = -MSA_INF;
	nf = 0.f;
#pragma unroll
	for (int c = 0; c < 16; c++)
#pragma unroll
		for (int e = 0; e < 2; e++)
			if (n0 + c * 8 + 2 * (lane % 4) + e <= p) {
				const float x = h2f(S[2 * c + hf], e);
				nf += fabsf(x);
				m = fmaxf(m, x);
			}
	return m;
}

// This warp's 16 rows' maxima over a key tile recomputed with fp32
// accumulators (mma.sync on e4m3), for the rare block whose f16 sums are
// not finite: rows lane / 4 and + 8 of q (the warp's first Q row), keys
// from n0, masked past p[hf], in row_max's distribution over the quad.
__device__ __forceinline__ void idx_rows_f32(float (&mr)[2], u32 q, u32 ktile, int n0, const int (&p)[2], int lane)
{
	const int g = lane / 4, t = lane % 4;
	u32 a[4][4];
#pragma unroll
	for (int kk = 0; kk < 4; kk++)
#pragma unroll
		for (int x = 0; x < 4; x++)
			a[kk][x] = ld_sw128_u32(q, g + (x & 1) * 8, kk * 32 + (x >> 1) * 16 + 4 * t);
	mr[0] = mr[1] = -MSA_INF;
	for (int nt = 0; nt < 16; nt++) {
		float d[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
		for (int kk = 0; kk < 4; kk++) {
			const u32 b[2] = {ld_sw128_u32(ktile, nt * 8 + g, kk * 32 + 4 * t),
					  ld_sw128_u32(ktile, nt * 8 + g, kk * 32 + 16 + 4 * t)};
			mma_e4m3_f32(d, a[kk], b);
		}
#pragma unroll
		for (int e = 0; e < 2; e++) {
			const int key = n0 + nt * 8 + 2 * t + e;
			if (key <= p[0])
				mr[0] = fmaxf(mr[0], d[e]);
			if (key <= p[1])
				mr[1] = fmaxf(mr[1], d[2 + e]);
		}
	}
}

__device__ __forceinline__ void reg_fence_s(float (&S)[16][4]) { reg_fence<64>(&S[0][0]); }
__device__ __forceinline__ void reg_fence_s(u32 (&S)[32]) { reg_fence_u<32>(S); }

#if !MSA_WRITE_SCORES
// The merge's four warps use the key ring (the host splits only KP <= 16).
static_assert(MSA_KP > 16 || 4 * (SPLIT_CAP + 128 + MSA_KP_ALLOC) * 8 <= NST * TBYTES,
	      "index_topk90: split merge space");


// Split top-k: this CTA's lists to split_ws, then the tile's last CTA
// merges every split's lists (see the top of the file).  ring: the key
// ring's shared memory, free once the products are done.
template <int TRN>
__device__ __forceinline__ void split_finish(const int (&lk)[2][TRN], const int (&li)[2][TRN], const bool (&valid)[2],
					     int rr0, int own, int lane, int wg, int nact, int total_q, int q0, int m0,
					     int q_len, int shift, int ks, int ksplit, int tile, unsigned char *ring,
					     int *flag, int *__restrict__ ids, int *split_ws)
{
	int2 *cand = reinterpret_cast<int2 *>(split_ws);
	int *ticket = split_ws + (size_t)2 * HI * total_q * ksplit * SPLIT_LS + tile;
	int &last = *flag;
#pragma unroll
	for (int hf = 0; hf < 2; hf++) {
		if (!valid[hf])
			continue;
		const int row = rr0 + hf * 8;
		int2 *dst = cand + (((size_t)(row % HI) * total_q + q0 + m0 + row / HI) * ksplit + ks) * SPLIT_LS;
#pragma unroll
		for (int r = 0; r < TRN; r++)
			if (own * TRN + r < MSA_KP)
				dst[own * TRN + r] = make_int2(lk[hf][r], li[hf][r]);
	}
	if (!ids)	// lists only: each sparse_fwd CTA merges its row (decode)
		return;
	// The barrier orders the CTA's list stores before one thread's ticket,
	// an acquire-release add at GPU scope (cumulative: it releases them
	// and, in the last CTA, acquires every other CTA's); the second
	// barrier orders the merge's reads after it.  No full fences.
	named_sync(1, 128 * nact);
	if (threadIdx.x == 128) {
		int prev;
		asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], 1;\n" : "=r"(prev) : "l"(ticket) : "memory");
		last = prev == ksplit - 1;
		if (last)
			*ticket = 0;	// for the next launch: every split has arrived
	}
	named_sync(1, 128 * nact);
	if (!last || wg != 1)
		return;
	const int warp = (threadIdx.x / 32) % 4;
	u64 *buf = reinterpret_cast<u64 *>(ring) + warp * (SPLIT_CAP + 128 + MSA_KP_ALLOC);
	int *ql = reinterpret_cast<int *>(buf + SPLIT_CAP), *rank = ql + 128;
	for (int row = warp; row < BM && m0 + row / HI < q_len; row += 4) {
		const int i = m0 + row / HI, g = (row % HI) * total_q + q0 + i;
		const int2 *c = cand + (size_t)g * ksplit * SPLIT_LS;
		split_merge_row([&](size_t e) { return __ldcg(c + e); }, ksplit, topk_visible_blocks(shift + i),
				ids + (size_t)g * MSA_TOPK, buf, ql, rank, lane);
	}
}
#endif

template <bool B> struct flag_t {
	static constexpr bool value = B;
};

extern "C" __global__ void __launch_bounds__(NT, 1)
msa_index_topk90(const __grid_constant__ tmap_t tq, const __grid_constant__ tmap_t tk,
		 const int *__restrict__ cu_q, const int *__restrict__ cu_kv,
		 const int *__restrict__ page_table, int pt_stride, float score_scale,
		 int *__restrict__ ids, float *__restrict__ scores, int nb_stride, int ksplit,
		 int *split_ws)
{
	extern __shared__ __align__(1024) unsigned char smem_raw[];
	const u32 sq = (smem_u32(smem_raw) + 1023) & ~1023u, sk = sq + QBYTES;
	unsigned char *lists = smem_raw + (sk + NST * TBYTES - smem_u32(smem_raw));
#if !MSA_WRITE_SCORES
	int *lid = reinterpret_cast<int *>(lists);	// [KP][BM] the final lists' ids
#endif
	const u32 bq = smem_u32(lists + 4 * MSA_KP_ALLOC * BM), bfull = bq + 8, bempty = bfull + 8 * NST;

	const int ks = blockIdx.x % ksplit;
	const int ntile = gridDim.x / ksplit;	// longest first
	const int m0 = (ntile - 1 - blockIdx.x / ksplit) * QPC;
	const int req = blockIdx.z;
	const int q0 = cu_q[req], q_len = cu_q[req + 1] - q0;
	if (m0 >= q_len)
		return;
	const int k0 = cu_kv[req], kv_len = cu_kv[req + 1] - k0;
	const int total_q = cu_q[gridDim.z];
	const int shift = kv_len - q_len;	// p(i) = shift + i
	const int p_last = shift + min(m0 + QPC, q_len) - 1;
	const int nb = topk_visible_blocks(p_last);	// blocks 0..nb-1, one tile each
	int it0 = 0, it1 = nb;
	if (ksplit > 1) {
		const int bps = (nb + ksplit - 1) / ksplit;
		it0 = min(nb, ks * bps);
		it1 = min(nb, (ks + 1) * bps);
	}
	const int wg = threadIdx.x / 128;

	// Consumer warpgroups with a valid row: the others (past a short tile's
	// end, and every one but the first in decode) leave at once, so their
	// products are not computed and the ring waits on the active ones only.
	const int nact = min(NCW, (min(QPC, q_len - m0) * HI + 63) / 64);
	if (threadIdx.x == 0) {
		mbar_init(bq, 1);
		for (int s = 0; s < NST; s++) {
			mbar_init(bfull + 8 * s, 1);
			mbar_init(bempty + 8 * s, 128 * nact);
		}
		asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
	}
	__syncthreads();

	if (wg == 0) {	// producer
		setmaxnreg_dec<24>();
		// Warp 0 reads the page table 32 blocks at a time, a lane a block,
		// the next 32 in flight while this 32's loads go out, so no block
		// waits on its page id after a stage frees; lane 0 drives TMA.
		if (threadIdx.x < 32 && it0 < it1) {
			const int lane = threadIdx.x;
			if (lane == 0) {
				tma_prefetch_map(&tq);
				tma_prefetch_map(&tk);
				mbar_expect_tx(bq, QBYTES);
#pragma unroll
				for (int a = 0; a < RB / 128; a++)
					tma_load_3d(sq + a * BM * 128, &tq, bq, a * 128 / ES, 0, q0 + m0);
			}
			const int *pt = page_table ? page_table + (size_t)req * pt_stride : nullptr;
			auto first_row = [&](int it) { return it >= it1 ? 0 : pt ? pt[it] * BK : k0 + it * BK; };
			int cur = first_row(it0 + lane);
			for (int c = it0; c < it1; c += 32) {
				const int nxt = first_row(c + 32 + lane), n = min(32, it1 - c);
				for (int x = 0; x < n; x++) {
					const int row = __shfl_sync(0xffffffffu, cur, x), j = c + x - it0, s = j % NST;
					if (lane == 0) {
						if (j >= NST)
							mbar_wait(bempty + 8 * s, ((j / NST) & 1) ^ 1);
						mbar_expect_tx(bfull + 8 * s, TBYTES);
#pragma unroll
						for (int a = 0; a < RB / 128; a++)
							tma_load_2d(sk + s * TBYTES + a * 128 * 128, &tk, bfull + 8 * s,
								    a * 128 / ES, row);
					}
				}
				cur = nxt;
			}
		}
		return;
	}
	setmaxnreg_inc<MSA_CREGS>();
	if (wg > nact)
		return;

	const int cw = wg - 1, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
	const int rr0 = cw * 64 + warp * 16 + lane / 4;	// CTA rows rr0, rr0 + 8
	int prow[2];
	bool valid[2];
#pragma unroll
	for (int hf = 0; hf < 2; hf++) {
		const int i = m0 + (rr0 + hf * 8) / HI;
		valid[hf] = i < q_len;
		prow[hf] = shift + i;
	}

	// Lanes 0 and 1 of a quad write the scores of its rows rr0 and rr0 + 8.
	const int own = lane % 4;
#if MSA_WRITE_SCORES
	const int orow = rr0 + (own & 1) * 8;
	const bool ovalid = own < 2 && (own ? valid[1] : valid[0]);
#else
	// Each row's top-KP list, sorted, spread over the quad: entry q * TR + r
	// is (lk[hf][r], li[hf][r]) of lane q, its score as topk_key; entries
	// past KP are padding, TOPK_KEY_NONE keys are empty slots.  A row's blocks
	// come in ascending order, so a newcomer ranks after every entry of an
	// equal score: entry e stays ahead of it iff key(e) >= its key.  thr is
	// entry KP - 1's key (the one a newcomer must exceed), in every lane.
	int nrow[2], lk[2][TR], li[2][TR], thr[2];
#pragma unroll
	for (int hf = 0; hf < 2; hf++) {
		nrow[hf] = valid[hf] ? topk_visible_blocks(prow[hf]) : 0;
		thr[hf] = TOPK_KEY_NONE;
#pragma unroll
		for (int r = 0; r < TR; r++) {
			lk[hf][r] = TOPK_KEY_NONE;
			li[hf][r] = -1;
		}
	}
	const int thr_lane = (lane & ~3) | ((MSA_KP_ALLOC - 1) / TR);
#endif
	const float sc = score_scale;	// native fp8 products: no widening to undo
	const u32 qtile = sq + cw * 64 * 128;
	if (it0 < it1)
		mbar_wait(bq, 0);
#if ACC16
	// f16 sums cannot leave f16's range when every row of the warp has
	// |q|_1 x 448 (the largest e4m3) below 65504: then no block needs the
	// check.  Lane t of a quad sums bytes 32t..32t+31 of its two rows (of a
	// Q tile that landed: a CTA with no blocks loads none).
	bool fp16_safe = true;
	if (it0 < it1) {
		float l1[2] = {0.f, 0.f};
#pragma unroll
		for (int hf = 0; hf < 2; hf++) {
#pragma unroll
			for (int w = 0; w < 8; w++) {
				const u32 x = ld_sw128_u32(qtile + warp * 16 * 128, lane / 4 + 8 * hf, 32 * own + 4 * w);
				l1[hf] += e4m3x4_abs_sum(x);
			}
			l1[hf] += __shfl_xor_sync(0xffffffffu, l1[hf], 1);
			l1[hf] += __shfl_xor_sync(0xffffffffu, l1[hf], 2);
		}
		fp16_safe = __all_sync(0xffffffffu, l1[0] * 448.f < 60000.f && l1[1] * 448.f < 60000.f);
	}
#endif

	// Start S = Q K^T of block it (after its keys land) without waiting.
	auto issue = [&](int it, auto &S) {
		const int j = it - it0;
		mbar_wait(bfull + 8 * (j % NST), (j / NST) & 1);
		wgmma_fence();
		idx_qk(S, qtile, sk + (j % NST) * TBYTES);
		wgmma_commit();
	};
	// Block it's score for this thread's rows from its own maxima mr (the
	// quad's lanes hold the rest), then the score write or top-k insertion.
	auto finish = [&](int it, const float (&mr)[2]) {
		float bs[2];
#pragma unroll
		for (int hf = 0; hf < 2; hf++) {
			float m = mr[hf];
			m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
			m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
			bs[hf] = m * sc;	// sc > 0: -inf stays -inf
		}
		const int b = it;
#if MSA_WRITE_SCORES
		if (ovalid && b < nb_stride)
			scores[((size_t)(orow % HI) * total_q + q0 + m0 + orow / HI) * nb_stride + b] =
				own ? bs[1] : bs[0];
#else
		if (MSA_KP == 0)
			return;
		int v[2];
		bool want[2];
#pragma unroll
		for (int hf = 0; hf < 2; hf++) {
			v[hf] = topk_key(bs[hf]);
			want[hf] = b >= MSA_SINK && b < nrow[hf] - MSA_LOCAL && v[hf] > thr[hf];
			v[hf] = want[hf] ? v[hf] : TOPK_KEY_NONE;	// TOPK_KEY_NONE: every entry stays
		}
		// The whole warp inserts into its rows rr0 (hf 0) or rr0 + 8 (hf 1)
		// when any of those rows must (the shuffles need every lane); a row
		// that must not keeps its list.  Voting per half skips the half
		// with no newcomer, most blocks once the lists have filled.
#pragma unroll
		for (int hf = 0; hf < 2; hf++) {
			if (!__any_sync(0xffffffffu, want[hf]))
				continue;
			bool stay[TR];	// entry r stays ahead of (v, b): monotone, true first
#pragma unroll
			for (int r = 0; r < TR; r++)
				stay[r] = lk[hf][r] >= v[hf];
			// The entry just before this lane's first: the previous lane's last.
			const int pk = __shfl_up_sync(0xffffffffu, lk[hf][TR - 1], 1, 4);
			const int pi = __shfl_up_sync(0xffffffffu, li[hf][TR - 1], 1, 4);
			const bool pstay = own == 0 || pk >= v[hf];
#pragma unroll
			for (int r = TR - 1; r >= 0; r--) {
				const bool prev_stays = r ? stay[r - 1] : pstay;
				const int ek = r ? lk[hf][r - 1] : pk;
				const int eb = r ? li[hf][r - 1] : pi;
				if (!stay[r]) {	// (v, b) lands here or further up: shift
					lk[hf][r] = prev_stays ? v[hf] : ek;
					li[hf][r] = prev_stays ? b : eb;
				}
			}
			thr[hf] = __shfl_sync(0xffffffffu, lk[hf][(MSA_KP_ALLOC - 1) % TR], thr_lane);
		}
#endif
	};
	auto release = [&](int it) { mbar_arrive(bempty + 8 * ((it - it0) % NST)); };

	// Every active warpgroup computes every block of the CTA: a block past its own
	// rows costs at most one tile, and a uniform trip count keeps the wgmma
	// chains convergent.  Two S buffers: block it+1's products run while
	// block it's score and top-k are worked out (and the other warpgroup
	// interleaves on top).
	auto done = [&](int it, auto &S) {
		reg_fence_s(S);
#if ACC16
		float nf[2];
		float mr[2] = {row_max<16>(S, 0, it * BK, prow[0], lane, nf[0]),
			       row_max<16>(S, 1, it * BK, prow[1], lane, nf[1])};
		if (!fp16_safe && __any_sync(0xffffffffu, !(nf[0] < MSA_INF && nf[1] < MSA_INF)))
			idx_rows_f32(mr, qtile + warp * 16 * 128, sk + ((it - it0) % NST) * TBYTES, it * BK, prow, lane);
		release(it);
#else
		release(it);
		const float mr[2] = {row_max<16>(S, 0, it * BK, prow[0], lane), row_max<16>(S, 1, it * BK, prow[1], lane)};
#endif
		finish(it, mr);
	};
	if (NCW == 3 && !ACC16 && it0 < it1) {
		// Three warpgroups leave registers for one S: once it is done and
		// reduced to the row maxima, the next block's products are issued,
		// then run through the shuffles and the top-k.  Straight-line: the
		// last block is peeled.
		float S[16][4];
		auto step = [&](int it, auto more) {	// block it in flight
			wgmma_wait<0>();
			reg_fence<64>(&S[0][0]);
			release(it);
			const float mr[2] = {row_max<16>(S, 0, it * BK, prow[0], lane),
					     row_max<16>(S, 1, it * BK, prow[1], lane)};
			if (decltype(more)::value)
				issue(it + 1, S);
			finish(it, mr);
		};
		issue(it0, S);
		for (int it = it0; it + 1 < it1; it++)
			step(it, flag_t<true>());
		step(it1 - 1, flag_t<false>());
	} else if (it0 < it1) {
		sbuf_t Sa, Sb;
		int it = it0;
		issue(it, Sa);
		for (; it + 2 < it1; it += 2) {	// Sa holds block it (in flight)
			issue(it + 1, Sb);
			wgmma_wait<1>();
			done(it, Sa);
			issue(it + 2, Sa);
			wgmma_wait<1>();
			done(it + 1, Sb);
		}
		if (it + 1 < it1) {	// two blocks left
			issue(it + 1, Sb);
			wgmma_wait<1>();
			done(it, Sa);
			wgmma_wait<0>();
			done(it + 1, Sb);
		} else {	// one
			wgmma_wait<0>();
			done(it, Sa);
		}
	}

#if MSA_WRITE_SCORES
	// Blocks nb .. nb_stride-1: no row of this CTA sees them.
	for (int x = 0; x < 16 && ks == 0; x++) {
		const int row = cw * 64 + warp * 16 + x, i = m0 + row / HI;
		if (i >= q_len)
			continue;
		float *srow = scores + ((size_t)(row % HI) * total_q + q0 + i) * nb_stride;
		for (int b = nb + lane; b < nb_stride; b += 32)
			srow[b] = -MSA_INF;
	}
#else
	if (ksplit > 1) {
		split_finish(lk, li, valid, rr0, own, lane, wg, nact, total_q, q0, m0, q_len, shift, ks, ksplit,
			     req * ntile + blockIdx.x / ksplit, smem_raw + (sk - smem_u32(smem_raw)), lid, ids,
			     split_ws);
		return;
	}
	// Stage each row's list in shared memory, then the quad writes the row.
#pragma unroll
	for (int hf = 0; hf < 2; hf++)
#pragma unroll
		for (int r = 0; r < TR; r++)
			if (own * TR + r < MSA_KP)
				lid[(own * TR + r) * BM + rr0 + hf * 8] = li[hf][r];
	__syncwarp();
#pragma unroll
	for (int hf = 0; hf < 2; hf++) {
		if (!valid[hf])
			continue;
		const int row = rr0 + hf * 8;
		int *dst = ids + ((size_t)(row % HI) * total_q + q0 + m0 + row / HI) * MSA_TOPK;
		write_row_ids(dst, nrow[hf], [&](int j) { return lid[j * BM + row]; }, lane % 4, 4);
	}
#endif
}

// attn.cuh - the warp-level pieces of flash attention shared by the dense,
// sparse and decode kernels: a warp owns 16 rows of Q (in registers) and
// folds tiles of BN keys into its output with an online softmax in the log2
// domain.  Tiles live in swizzled shared memory (swz<D>).
#pragma once
#include "common.cuh"

// Copy ROWS rows of a [ROWS][COLS] 16-bit tile; rowptr(r) gives the row's
// global address or nullptr for a zero row.  16-bit sources go through
// cp.async; fp8 e4m3 (DT 2) is loaded, widened to fp16 bits and stored.
// The widening h = (sign << 15) | (e4m3 & 0x7f) << 7 is exact and gives the
// e4m3 value / 256, so callers fold 256 per fp8 operand into their scales.
template <int ROWS, int COLS, int NT, int DT, typename F>
__device__ __forceinline__ void tile_load(u16 *tile, const void *any, F rowptr)
{
	const int chunks = COLS / 8;
	for (int i = threadIdx.x; i < ROWS * chunks; i += NT) {
		int r = i / chunks, c = i % chunks;
		const u8 *p = (const u8 *)rowptr(r);
		u32 dst = smem_u32(tile) + swz<COLS>(r, c * 8);
		if (DT != 2) {
			cp_async16(dst, p ? (const void *)(p + c * 16) : any, p ? 16 : 0);
		} else {
			uint2 raw = p ? *reinterpret_cast<const uint2 *>(p + c * 8) : make_uint2(0, 0);
			u32 w[4];
#pragma unroll
			for (int h = 0; h < 4; h++) {
				u32 x = h < 2 ? raw.x : raw.y;
				u32 b0 = (x >> ((h & 1) * 16)) & 0xff, b1 = (x >> ((h & 1) * 16 + 8)) & 0xff;
				w[h] = ((b0 & 0x80) << 8 | (b0 & 0x7f) << 7) | ((b1 & 0x80) << 8 | (b1 & 0x7f) << 7) << 16;
			}
			asm volatile("st.shared.v4.u32 [%0], {%1,%2,%3,%4};\n"
				     :: "r"(dst), "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3]));
		}
	}
}

// Row pointers of a K or V tile of one head h starting at key n0 of a
// request: key n0 + rr for rr <= lim, else nullptr (a zero row).  The tile
// lies in one block of BK keys, so a paged cache ([pages, Hkv, BK, D],
// this request's page table pt) costs one page-table read per tile, not
// one per row; contiguous KV is [tokens, Hkv, D] from token k0.
template <int D, int ES, int BK>
__device__ __forceinline__ auto kv_tile_rows(const u8 *base, int n0, int lim, const int *pt, int k0, int h)
{
	const u8 *r0 = !pt ? base + ((size_t)(k0 + n0) * MSA_HKV + h) * D * ES
		     : lim >= 0 ? base + (((size_t)pt[n0 / BK] * MSA_HKV + h) * BK + n0 % BK) * D * ES
				: nullptr;
	const int rs = (pt ? 1 : MSA_HKV) * D * ES;
	return [=](int rr) -> const u8 * { return rr <= lim ? r0 + rr * rs : nullptr; };
}

// The matrix-instruction type for a storage type: fp8 is widened to fp16.
#define MMA_DT(dt) ((dt) == 2 ? 1 : (dt))
#define ELEM_BYTES(dt) ((dt) == 2 ? 1 : 2)

// The A fragments of 16 rows x D columns of a swizzled tile, from row r0.
template <int D>
__device__ __forceinline__ void load_a_frags(u32 (&qa)[D / 16][4], const u16 *tile, int r0, int lane)
{
#pragma unroll
	for (int kk = 0; kk < D / 16; kk++) {
		int r = r0 + (lane % 8) + ((lane / 8) % 2) * 8;
		int c = kk * 16 + (lane / 16) * 8;
		ldsm_x4(smem_u32(tile) + swz<D>(r, c), qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3]);
	}
}

// s = Q K^T for one tile of BN keys (K tile is [BN][D]).
template <int D, int BN, int DT>
__device__ __forceinline__ void qk_tile(const u32 (&qa)[D / 16][4], const u16 *ktile,
					float (&s)[BN / 8][4], int lane)
{
#pragma unroll
	for (int j = 0; j < BN / 8; j++)
		s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
	for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
		for (int j = 0; j < BN / 8; j += 2) {
			u32 b0, b1, b2, b3;
			int r = j * 8 + (lane % 8) + (lane / 16) * 8;
			int c = kk * 16 + ((lane / 8) % 2) * 8;
			ldsm_x4(smem_u32(ktile) + swz<D>(r, c), b0, b1, b2, b3);
			mma16816<DT>(s[j], qa[kk], b0, b1);
			mma16816<DT>(s[j + 1], qa[kk], b2, b3);
		}
	}
}

// Per-thread softmax state for its two rows (lane/4 and lane/4 + 8).
struct row_state {
	float m[2];	// running max, log2 domain; -inf until a key is seen
	float l[2];	// running sum of exp2, this thread's columns only
};

__device__ __forceinline__ void row_state_init(row_state &st)
{
	st.m[0] = st.m[1] = -MSA_INF;
	st.l[0] = st.l[1] = 0.f;
}

// Scale logits into the log2 domain and mask: visible(row_half, col) says
// whether column col (0..BN-1 of this tile) is a key the row may see.
template <int BN, typename V>
__device__ __forceinline__ void scale_mask(float (&s)[BN / 8][4], float scale_log2, int lane, V visible)
{
	const int t = lane % 4;
#pragma unroll
	for (int j = 0; j < BN / 8; j++)
#pragma unroll
		for (int e = 0; e < 4; e++) {
			int col = j * 8 + 2 * t + (e & 1);
			s[j][e] = visible(e / 2, col) ? s[j][e] * scale_log2 : -MSA_INF;
		}
}

// One softmax step on a masked tile: updates the row state, leaves P
// (bf16/fp16) in pa and the factor alpha[r] that o's rows must be scaled by
// before P V is added (callers that keep o busy apply it later).  FOLD: s
// holds raw logits and scale (> 0) multiplies them inside the exp2's FFMA,
// instead of a multiply per score beforehand.
template <int BN, int DT, bool FOLD = false>
__device__ __forceinline__ void softmax_step(float (&s)[BN / 8][4], row_state &st, u32 (&pa)[BN / 16][4],
					     float (&alpha)[2], float scale = 1.f)
{
	float mx[2] = {FOLD ? -MSA_INF : st.m[0], FOLD ? -MSA_INF : st.m[1]};
#pragma unroll
	for (int j = 0; j < BN / 8; j++) {
		mx[0] = fmaxf(mx[0], fmaxf(s[j][0], s[j][1]));
		mx[1] = fmaxf(mx[1], fmaxf(s[j][2], s[j][3]));
	}
#pragma unroll
	for (int r = 0; r < 2; r++) {
		mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], 1));
		mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], 2));
		if (FOLD)
			mx[r] = fmaxf(st.m[r], mx[r] * scale);
		// exp2(-inf - -inf) is NaN: a row that has seen nothing uses base 0
		float base = mx[r] == -MSA_INF ? 0.f : mx[r];
		alpha[r] = st.m[r] == -MSA_INF ? 0.f : fast_exp2(st.m[r] - base);
		st.m[r] = mx[r];
		mx[r] = base;
		st.l[r] *= alpha[r];
	}
	auto p = [&](float x, float m) { return fast_exp2(FOLD ? fmaf(x, scale, -m) : x - m); };
#pragma unroll
	for (int j = 0; j < BN / 8; j++) {
		float p0 = p(s[j][0], mx[0]), p1 = p(s[j][1], mx[0]);
		float p2 = p(s[j][2], mx[1]), p3 = p(s[j][3], mx[1]);
		st.l[0] += p0 + p1;
		st.l[1] += p2 + p3;
		pa[j / 2][(j & 1) * 2 + 0] = pack2<DT>(p0, p1);
		pa[j / 2][(j & 1) * 2 + 1] = pack2<DT>(p2, p3);
	}
}

template <int D>
__device__ __forceinline__ void rescale_rows(float (&o)[D / 8][4], const float (&alpha)[2])
{
#pragma unroll
	for (int j = 0; j < D / 8; j++) {
		o[j][0] *= alpha[0];
		o[j][1] *= alpha[0];
		o[j][2] *= alpha[1];
		o[j][3] *= alpha[1];
	}
}

// Fold a masked tile into (st, o); leaves P (bf16/fp16) in pa for PV.
template <int D, int BN, int DT>
__device__ __forceinline__ void online_softmax(float (&s)[BN / 8][4], row_state &st,
					       float (&o)[D / 8][4], u32 (&pa)[BN / 16][4])
{
	float alpha[2];
	softmax_step<BN, DT>(s, st, pa, alpha);
	rescale_rows<D>(o, alpha);
}

// o += P V for one tile (V tile is [BN][D]).
template <int D, int BN, int DT>
__device__ __forceinline__ void pv_tile(const u32 (&pa)[BN / 16][4], const u16 *vtile,
					float (&o)[D / 8][4], int lane)
{
#pragma unroll
	for (int kk = 0; kk < BN / 16; kk++) {
#pragma unroll
		for (int j = 0; j < D / 8; j += 2) {
			u32 b0, b1, b2, b3;
			int r = kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
			int c = j * 8 + (lane / 16) * 8;
			ldsm_x4_t(smem_u32(vtile) + swz<D>(r, c), b0, b1, b2, b3);
			mma16816<DT>(o[j], pa[kk], b0, b1);
			mma16816<DT>(o[j + 1], pa[kk], b2, b3);
		}
	}
}

// Row sums across the quad; returns the natural-log lse of row half r
// (-inf for a row that saw no key) and the 1/l to normalise with.
__device__ __forceinline__ float row_finish(const row_state &st, int r, float &inv)
{
	float l = st.l[r];
	l += __shfl_xor_sync(0xffffffff, l, 1);
	l += __shfl_xor_sync(0xffffffff, l, 2);
	inv = l > 0.f ? 1.f / l : 0.f;
	return l > 0.f ? (st.m[r] + __log2f(l)) * 0.69314718055994531f : -MSA_INF;
}

// Store row half r of o (scaled by inv) as 16-bit DT at dst (D values).
template <int D, int DT>
__device__ __forceinline__ void store_row(const float (&o)[D / 8][4], int r, float inv, u16 *dst, int lane)
{
	const int t = lane % 4;
#pragma unroll
	for (int j = 0; j < D / 8; j++)
		*reinterpret_cast<u32 *>(dst + j * 8 + 2 * t) = pack2<DT>(o[j][2 * r] * inv, o[j][2 * r + 1] * inv);
}

// Normalise and store this thread's two rows (row_a, row_a + 8) of a dense
// output: out [tokens, Hq, D] and lse [tokens, Hq] at token q0 + row, head
// hq; rows >= q_len are skipped, a row with no visible key gives 0 and -inf.
template <int D, int DT, typename OUT>
__device__ __forceinline__ void store_dense_rows(const row_state &st, const float (&o)[D / 8][4], int row_a,
						 int q_len, int q0, int hq, float out_scale, OUT *out,
						 float *lse, int lane)
{
#pragma unroll
	for (int r = 0; r < 2; r++) {
		float inv;
		const float l = row_finish(st, r, inv);
		const int row = row_a + r * 8;
		if (row < q_len) {
			size_t at = (size_t)(q0 + row) * MSA_HQ + hq;
			store_row<D, DT>(o, r, inv * out_scale, out + at * D, lane);
			if (lane % 4 == 0)
				lse[at] = l;
		}
	}
}

// Store row half r of o (scaled by inv) as fp32 (split partials).
template <int D>
__device__ __forceinline__ void store_row_f32(const float (&o)[D / 8][4], int r, float inv, float *dst, int lane)
{
	const int t = lane % 4;
#pragma unroll
	for (int j = 0; j < D / 8; j++)
		*reinterpret_cast<float2 *>(dst + j * 8 + 2 * t) = make_float2(o[j][2 * r] * inv, o[j][2 * r + 1] * inv);
}

template <int D>
__device__ __forceinline__ void zero_acc(float (&o)[D / 8][4])
{
#pragma unroll
	for (int j = 0; j < D / 8; j++)
		o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
}

// attend_tiles' prologue: K and V of tiles 0 and 1 into stages 0 and 1,
// four cp.async commit groups (K0 V0 K1 V1; empty past ntiles).  Call it
// right after issuing the Q tile (which rides in K0's group), before
// waiting for anything: a short CTA (a decode split has one or two tiles)
// then has all its loads in flight at once.  Returns once Q and K0 have
// landed and are visible to the whole CTA.
template <int D, int BN, int NT, int DT, typename Start, typename KRow>
__device__ __forceinline__ void attend_prologue(u16 (&ks)[2][BN * D], u16 (&vs)[2][BN * D], const void *any,
						const void *kbase, const void *vbase, int ntiles, Start start,
						KRow krow)
{
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (i < ntiles)
			tile_load<BN, D, NT, DT>(ks[i], any, krow(kbase, start(i)));
		cp_async_commit();
		if (i < ntiles)
			tile_load<BN, D, NT, DT>(vs[i], any, krow(vbase, start(i)));
		cp_async_commit();
	}
	cp_async_wait<3>();
	__syncthreads();
}

// The main loop every attention kernel shares, after attend_prologue.
// Tiles it < ntiles of BN keys start at key start(it).  krow(base, n0)
// gives the row pointers of the tile at n0.  Each warp takes BNW of the BN
// columns from coff.  full(n0) says a tile needs no mask; otherwise
// visible(half, key) decides per score (half 0/1: the thread's rows lane/4
// and lane/4 + 8).  Both stages stay in flight: V of tile it + 1 is issued
// as soon as every warp is past tile it - 1's P V, K of tile it + 2 as soon
// as every warp is past tile it's Q K^T.  Commit order: K0 V0 K1 V1, then
// per tile an (empty at it = 0) V(it + 1) group and a K(it + 2) group; at
// either wait the two newest groups may stay pending.
template <int D, int BN, int BNW, int NT, int DT, typename Start, typename KRow, typename Full,
	  typename Vis>
__device__ __forceinline__ void attend_tiles(u16 (&ks)[2][BN * D], u16 (&vs)[2][BN * D], const void *any,
					     const void *kbase, const void *vbase, int ntiles, Start start,
					     KRow krow, Full full, Vis visible, int coff, float scale_log2,
					     const u32 (&qa)[D / 16][4], row_state &st, float (&o)[D / 8][4],
					     int lane)
{
	for (int it = 0; it < ntiles; it++) {
		const int stg = it & 1, n0 = start(it);
		cp_async_wait<2>();	// K of tile it
		__syncthreads();
		if (it >= 1 && it + 1 < ntiles)
			tile_load<BN, D, NT, DT>(vs[stg ^ 1], any, krow(vbase, start(it + 1)));
		cp_async_commit();
		float s[BNW / 8][4];
		qk_tile<D, BNW, MMA_DT(DT)>(qa, ks[stg] + coff * D, s, lane);
		if (full(n0))
			scale_mask<BNW>(s, scale_log2, lane, [](int, int) { return true; });
		else
			scale_mask<BNW>(s, scale_log2, lane,
					[&](int half, int col) { return visible(half, n0 + coff + col); });
		u32 pa[BNW / 16][4];
		online_softmax<D, BNW, MMA_DT(DT)>(s, st, o, pa);
		cp_async_wait<2>();	// V of tile it
		__syncthreads();	// and every warp is past Q K^T of tile it
		if (it + 2 < ntiles)
			tile_load<BN, D, NT, DT>(ks[stg], any, krow(kbase, start(it + 2)));
		cp_async_commit();
		pv_tile<D, BNW, MMA_DT(DT)>(pa, vs[stg] + coff * D, o, lane);
	}
	cp_async_wait<0>();
}

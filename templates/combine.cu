// combine.cu - merge partial (o, lse) pairs of one (token, query head):
// out = sum_s exp(lse_s - m) o_s / sum_s exp(lse_s - m), lse = m + log(sum).
// One warp per row; partials with lse -inf add nothing, and a row with no
// partial gives 0 and -inf.  Three layouts (and modes 3 and 4, below):
//   mode 0 (msa_sparse_fwd splits): partial s of row at s * rows + row
//   mode 1 (msa_sparse_kvo): [token, Hkv, k, G]: row (t, g*G + h) has its
//          k partials at ((t * Hkv + g) * k + s) * G + h
//   mode 2 (msa_sparse_kvo90): mode 1 with o in bf16
#include "common.cuh"

#define D MSA_D
typedef dtype_traits<MSA_DT_OUT>::T out_t;

#define E (D / 32)	// contiguous columns per lane
static_assert(E == 2 || E == 4, "combine: head_dim 64 or 128");

// Columns lane * E .. lane * E + E - 1 of partial row `at` (fp32 or bf16).
template <bool BF16>
__device__ __forceinline__ void load_cols(const void *part_o, size_t at, int lane, float (&x)[E])
{
	if (BF16) {
		const u16 *p = reinterpret_cast<const u16 *>(part_o) + at * D + lane * E;
		u32 r[E / 2];
		if (E == 4) {
			const uint2 v = *reinterpret_cast<const uint2 *>(p);
			r[0] = v.x, r[E / 2 - 1] = v.y;
		} else {
			r[0] = *reinterpret_cast<const u32 *>(p);
		}
#pragma unroll
		for (int j = 0; j < E / 2; j++)
			x[2 * j] = bf16_to_f((u16)(r[j] & 0xffff)), x[2 * j + 1] = bf16_to_f((u16)(r[j] >> 16));
	} else {
		const float *p = reinterpret_cast<const float *>(part_o) + at * D + lane * E;
		if (E == 4) {
			const float4 v = *reinterpret_cast<const float4 *>(p);
			x[0] = v.x, x[1] = v.y, x[E - 2] = v.z, x[E - 1] = v.w;
		} else {
			const float2 v = *reinterpret_cast<const float2 *>(p);
			x[0] = v.x, x[1] = v.y;
		}
	}
}

// One warp merges the nsplit partials of one row, partial s at base + s *
// step.  Lanes load one partial's lse each (nsplit <= 64: the k <= 64
// slots, or splits of them), then every lane issues its columns of eight
// partials before summing them, so the loads are in flight together
// instead of two dependent ones per partial.  A partial with lse -inf
// (an unused KV-outer slot, or a split that saw no key) is not read.
template <bool BF16>
__device__ __forceinline__ void merge_row(const void *__restrict__ part_o, const float *__restrict__ part_lse,
					  size_t base, size_t step, int nsplit, out_t *__restrict__ dst,
					  float *__restrict__ lse, int lane)
{
	float w[2], m = -MSA_INF, wsum = 0.f;
#pragma unroll
	for (int h = 0; h < 2; h++) {
		const int s = lane + 32 * h;
		w[h] = s < nsplit ? part_lse[base + s * step] : -MSA_INF;
		m = fmaxf(m, w[h]);
	}
#pragma unroll
	for (int off = 16; off > 0; off >>= 1)
		m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
#pragma unroll
	for (int h = 0; h < 2; h++) {
		w[h] = w[h] == -MSA_INF ? 0.f : __expf(w[h] - m);
		wsum += w[h];
	}
#pragma unroll
	for (int off = 16; off > 0; off >>= 1)
		wsum += __shfl_xor_sync(0xffffffffu, wsum, off);
	float acc[E];
#pragma unroll
	for (int e = 0; e < E; e++)
		acc[e] = 0.f;
	for (int s0 = 0; s0 < nsplit; s0 += 8) {
		float x[8][E], ws[8];
#pragma unroll
		for (int i = 0; i < 8; i++) {
			const int s = min(s0 + i, nsplit - 1);
			const float wi = __shfl_sync(0xffffffffu, s < 32 ? w[0] : w[1], s % 32);
			ws[i] = s0 + i < nsplit ? wi : 0.f;
#pragma unroll
			for (int e = 0; e < E; e++)
				x[i][e] = 0.f;
			if (ws[i] > 0.f)
				load_cols<BF16>(part_o, base + s * step, lane, x[i]);
		}
#pragma unroll
		for (int i = 0; i < 8; i++)
#pragma unroll
			for (int e = 0; e < E; e++)
				acc[e] += ws[i] * x[i][e];
	}
	const float inv = wsum > 0.f ? 1.f / wsum : 0.f;
	u32 packed[E / 2];
#pragma unroll
	for (int j = 0; j < E / 2; j++)
		packed[j] = pack2<MSA_DT_OUT>(acc[2 * j] * inv, acc[2 * j + 1] * inv);
	if (E == 4)
		*reinterpret_cast<uint2 *>(dst + lane * E) = make_uint2(packed[0], packed[E / 2 - 1]);
	else
		*reinterpret_cast<u32 *>(dst + lane * E) = packed[0];
	if (lane == 0)
		*lse = wsum > 0.f ? m + __logf(wsum) : -MSA_INF;
}

// Mode 3 (mode 0's layout, split decode): a CTA per row, its four warps
// take partials w * 8 .. w * 8 + 7 of every 32.  Each split of
// msa_sparse_fwd writes its partial (zeros and -inf when it saw no key),
// so a warp issues its eight partials' lse and columns before using any
// (no load waits on a weight: one round trip where mode 0 takes one for
// the lse and one per eight partials), then the warps merge through
// shared memory.
__device__ __forceinline__ void merge_row_cta(const float *__restrict__ part_o, const float *__restrict__ part_lse,
					      int row, int rows, int nsplit, out_t *__restrict__ dst,
					      float *__restrict__ lse)
{
	__shared__ float xacc[4][D], xm[4], xw[4];
	const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
	float m = -MSA_INF, wsum = 0.f, acc[E];
#pragma unroll
	for (int e = 0; e < E; e++)
		acc[e] = 0.f;
	for (int s0 = warp * 8; s0 < nsplit; s0 += 32) {
		float x[8][E], l[8];
#pragma unroll
		for (int i = 0; i < 8; i++) {
			const int s = s0 + i;
			l[i] = s < nsplit ? part_lse[(size_t)s * rows + row] : -MSA_INF;
#pragma unroll
			for (int e = 0; e < E; e++)
				x[i][e] = 0.f;
			if (s < nsplit)
				load_cols<false>(part_o, (size_t)s * rows + row, lane, x[i]);
		}
		float mn = m;
#pragma unroll
		for (int i = 0; i < 8; i++)
			mn = fmaxf(mn, l[i]);
		const float base = mn == -MSA_INF ? 0.f : mn, a = m == -MSA_INF ? 0.f : __expf(m - base);
		wsum *= a;
#pragma unroll
		for (int e = 0; e < E; e++)
			acc[e] *= a;
#pragma unroll
		for (int i = 0; i < 8; i++) {
			const float w = l[i] == -MSA_INF ? 0.f : __expf(l[i] - base);
			wsum += w;
#pragma unroll
			for (int e = 0; e < E; e++)
				acc[e] += w * x[i][e];
		}
		m = mn;
	}
#pragma unroll
	for (int e = 0; e < E; e++)
		xacc[warp][lane * E + e] = acc[e];
	if (lane == 0)
		xm[warp] = m, xw[warp] = wsum;
	__syncthreads();
	if (warp != 0)
		return;
	float mm = fmaxf(fmaxf(xm[0], xm[1]), fmaxf(xm[2], xm[3])), tot = 0.f, a[4];
	const float base = mm == -MSA_INF ? 0.f : mm;
#pragma unroll
	for (int w = 0; w < 4; w++) {
		a[w] = xm[w] == -MSA_INF ? 0.f : __expf(xm[w] - base);
		tot += a[w] * xw[w];
	}
	const float inv = tot > 0.f ? 1.f / tot : 0.f;
	u32 packed[E / 2];
#pragma unroll
	for (int j = 0; j < E / 2; j++) {
		float v[2];
#pragma unroll
		for (int h = 0; h < 2; h++) {
			const int c = lane * E + 2 * j + h;
			v[h] = (a[0] * xacc[0][c] + a[1] * xacc[1][c] + a[2] * xacc[2][c] + a[3] * xacc[3][c]) * inv;
		}
		packed[j] = pack2<MSA_DT_OUT>(v[0], v[1]);
	}
	if (E == 4)
		*reinterpret_cast<uint2 *>(dst + lane * E) = make_uint2(packed[0], packed[E / 2 - 1]);
	else
		*reinterpret_cast<u32 *>(dst + lane * E) = packed[0];
	if (lane == 0)
		*lse = tot > 0.f ? mm + __logf(tot) : -MSA_INF;
}

// 8 CTAs an SM leave 64 registers a thread: room for eight partials in
// flight per lane (32 would spill them)
extern "C" __global__ void __launch_bounds__(128, 8)
msa_combine(const float *__restrict__ part_o, const float *__restrict__ part_lse, int nsplit,
	    int rows, int mode, out_t *__restrict__ out, float *__restrict__ lse, const int *__restrict__ rowmap)
{
	if (mode == 3 || mode == 4) {
		// mode 4 (msa_dense_fwd90's split tail): row r goes to out row rowmap[r], or nowhere (-1)
		const int at = mode == 4 && blockIdx.x < rows ? rowmap[blockIdx.x] : (int)blockIdx.x;
		if (blockIdx.x < rows && at >= 0)
			merge_row_cta(part_o, part_lse, blockIdx.x, rows, nsplit, out + (size_t)at * D, lse + at);
		return;
	}
	const int row = blockIdx.x * 4 + threadIdx.x / 32, lane = threadIdx.x % 32;
	if (row >= rows)
		return;
	out_t *dst = out + (size_t)row * D;
	if (mode == 0) {
		merge_row<false>(part_o, part_lse, row, rows, nsplit, dst, lse + row, lane);
		return;
	}
	const int t = row / MSA_HQ, hq = row % MSA_HQ;
	const size_t base = ((size_t)t * MSA_HKV + hq / MSA_G) * nsplit * MSA_G + hq % MSA_G;
	if (mode == 2)
		merge_row<true>(part_o, part_lse, base, MSA_G, nsplit, dst, lse + row, lane);
	else
		merge_row<false>(part_o, part_lse, base, MSA_G, nsplit, dst, lse + row, lane);
}

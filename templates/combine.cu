// combine.cu - merge partial (o, lse) pairs of one (token, query head):
// out = sum_s exp(lse_s - m) o_s / sum_s exp(lse_s - m), lse = m + log(sum).
// One warp per row; partials with lse -inf add nothing, and a row with no
// partial gives 0 and -inf.  Three layouts:
//   mode 0 (msa_sparse_fwd splits): partial s of row at s * rows + row
//   mode 1 (msa_sparse_kvo): [token, Hkv, k, G]: row (t, g*G + h) has its
//          k partials at ((t * Hkv + g) * k + s) * G + h
//   mode 2 (msa_sparse_kvo90): mode 1 with o in bf16
#include "common.cuh"

#define D MSA_D
typedef dtype_traits<MSA_DT_OUT>::T out_t;

// out = acc / wsum in the output type, lse = m + log(wsum); a row with no
// partial gives 0 and -inf.
__device__ __forceinline__ void store_merged(const float (&acc)[D / 32], float wsum, float m, out_t *dst,
					     float *lse, int lane)
{
	const float inv = wsum > 0.f ? 1.f / wsum : 0.f;
#pragma unroll
	for (int e = 0; e < D / 32; e++)
		dst[lane + 32 * e] = (u16)(pack2<MSA_DT_OUT>(acc[e] * inv, 0.f) & 0xffff);
	if (lane == 0)
		*lse = wsum > 0.f ? m + __logf(wsum) : -MSA_INF;
}

// Mode 0 (decode: few rows, every split wrote its partial): lanes load one
// split's lse each, then every lane issues its columns of all partials
// before summing, so a row costs two round trips to memory, not two per
// split.  nsplit <= 64 (the splits divide the k <= 64 slots).
__device__ __forceinline__ void merge_splits(const float *__restrict__ part_o, const float *__restrict__ part_lse,
					     int row, int rows, int nsplit, out_t *__restrict__ out,
					     float *__restrict__ lse, int lane)
{
	float w[2], m = -MSA_INF, wsum = 0.f;
#pragma unroll
	for (int h = 0; h < 2; h++) {
		const int s = lane + 32 * h;
		w[h] = s < nsplit ? part_lse[row + (size_t)s * rows] : -MSA_INF;
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
	float acc[D / 32];
#pragma unroll
	for (int e = 0; e < D / 32; e++)
		acc[e] = 0.f;
	for (int s0 = 0; s0 < nsplit; s0 += 8) {	// 8 partials' loads, then their sums
		float x[8][D / 32], ws[8];
#pragma unroll
		for (int i = 0; i < 8; i++) {
			const int s = min(s0 + i, nsplit - 1);
			const float wi = __shfl_sync(0xffffffffu, s < 32 ? w[0] : w[1], s % 32);
			ws[i] = s0 + i < nsplit ? wi : 0.f;
			const float *src = part_o + ((size_t)s * rows + row) * D + lane;
#pragma unroll
			for (int e = 0; e < D / 32; e++)
				x[i][e] = src[32 * e];
		}
#pragma unroll
		for (int i = 0; i < 8; i++)
#pragma unroll
			for (int e = 0; e < D / 32; e++)
				acc[e] += ws[i] * x[i][e];	// finite: every split wrote its rows
	}
	store_merged(acc, wsum, m, out + (size_t)row * D, lse + row, lane);
}

extern "C" __global__ void __launch_bounds__(128)
msa_combine(const float *__restrict__ part_o, const float *__restrict__ part_lse, int nsplit,
	    int rows, int mode, out_t *__restrict__ out, float *__restrict__ lse)
{
	const int row = blockIdx.x * 4 + threadIdx.x / 32, lane = threadIdx.x % 32;
	if (row >= rows)
		return;
	if (mode == 0) {
		merge_splits(part_o, part_lse, row, rows, nsplit, out, lse, lane);
		return;
	}
	const int t = row / MSA_HQ, hq = row % MSA_HQ;
	const size_t base = ((size_t)t * MSA_HKV + hq / MSA_G) * nsplit * MSA_G + hq % MSA_G, step = MSA_G;
	float m = -MSA_INF;
	for (int s = 0; s < nsplit; s++)
		m = fmaxf(m, part_lse[base + s * step]);
	float acc[D / 32], wsum = 0.f;
#pragma unroll
	for (int e = 0; e < D / 32; e++)
		acc[e] = 0.f;
	if (m != -MSA_INF) {
		for (int s = 0; s < nsplit; s++) {
			float ls = part_lse[base + s * step];
			if (ls == -MSA_INF)
				continue;
			float w = __expf(ls - m);
			wsum += w;
			const size_t at = (base + s * step) * D;
			if (mode == 2) {
				const u16 *po = reinterpret_cast<const u16 *>(part_o) + at;
#pragma unroll
				for (int e = 0; e < D / 32; e++)
					acc[e] += w * bf16_to_f(po[lane + 32 * e]);
			} else {
#pragma unroll
				for (int e = 0; e < D / 32; e++)
					acc[e] += w * part_o[at + lane + 32 * e];
			}
		}
	}
	store_merged(acc, wsum, m, out + (size_t)row * D, lse + row, lane);
}

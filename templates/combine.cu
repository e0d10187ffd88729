// combine.cu - merge the per-split partial (o, lse) of msa_sparse_fwd:
// out = sum_s exp(lse_s - m) o_s / sum_s exp(lse_s - m), lse = m + log(sum).
// One warp per (token, query head); splits that saw no key (lse -inf) add
// nothing, and a row no split saw gives 0 and -inf.
#include "common.cuh"

#define D MSA_D
typedef dtype_traits<MSA_DT_OUT>::T out_t;

extern "C" __global__ void __launch_bounds__(128)
msa_combine(const float *__restrict__ part_o, const float *__restrict__ part_lse, int nsplit,
	    int rows, out_t *__restrict__ out, float *__restrict__ lse)
{
	const int row = blockIdx.x * 4 + threadIdx.x / 32, lane = threadIdx.x % 32;
	if (row >= rows)
		return;
	float m = -MSA_INF;
	for (int s = 0; s < nsplit; s++)
		m = fmaxf(m, part_lse[(size_t)s * rows + row]);
	float acc[D / 32], wsum = 0.f;
#pragma unroll
	for (int e = 0; e < D / 32; e++)
		acc[e] = 0.f;
	if (m != -MSA_INF) {
		for (int s = 0; s < nsplit; s++) {
			float ls = part_lse[(size_t)s * rows + row];
			if (ls == -MSA_INF)
				continue;
			float w = __expf(ls - m);
			wsum += w;
			const float *po = part_o + ((size_t)s * rows + row) * D;
#pragma unroll
			for (int e = 0; e < D / 32; e++)
				acc[e] += w * po[lane + 32 * e];
		}
	}
	const float inv = wsum > 0.f ? 1.f / wsum : 0.f;
	out_t *dst = out + (size_t)row * D;
#pragma unroll
	for (int e = 0; e < D / 32; e++) {
		float x = acc[e] * inv;
		u16 h;
		if (MSA_DT_OUT == 0)
			h = (u16)(pack2<0>(x, 0.f) & 0xffff);
		else
			h = (u16)(pack2<1>(x, 0.f) & 0xffff);
		dst[lane + 32 * e] = h;
	}
	if (lane == 0)
		lse[row] = wsum > 0.f ? m + __logf(wsum) : -MSA_INF;
}

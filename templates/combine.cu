// combine.cu - merge partial (o, lse) pairs of one (token, query head):
// out = sum_s exp(lse_s - m) o_s / sum_s exp(lse_s - m), lse = m + log(sum).
// One warp per row; partials with lse -inf add nothing, and a row with no
// partial gives 0 and -inf.  Two layouts:
//   mode 0 (msa_sparse_fwd splits): partial s of row at s * rows + row
//   mode 1 (msa_sparse_kvo): [token, Hkv, k, G]: row (t, g*G + h) has its
//          k partials at ((t * Hkv + g) * k + s) * G + h
//   mode 2 (msa_sparse_kvo90): mode 1 with o in bf16
#include "common.cuh"

#define D MSA_D
typedef dtype_traits<MSA_DT_OUT>::T out_t;

extern "C" __global__ void __launch_bounds__(128)
msa_combine(const float *__restrict__ part_o, const float *__restrict__ part_lse, int nsplit,
	    int rows, int mode, out_t *__restrict__ out, float *__restrict__ lse)
{
	const int row = blockIdx.x * 4 + threadIdx.x / 32, lane = threadIdx.x % 32;
	if (row >= rows)
		return;
	size_t base = row, step = rows;
	if (mode >= 1) {
		int t = row / MSA_HQ, hq = row % MSA_HQ;
		base = ((size_t)t * MSA_HKV + hq / MSA_G) * nsplit * MSA_G + hq % MSA_G;
		step = MSA_G;
	}
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

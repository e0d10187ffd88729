// topk.cu - standalone top-k over a block-score tensor (MSA.md section 2).
//
// One warp per row (index head h, token t), one pass over the row's scores:
// each lane keeps its own best KP candidates in registers (sorted, in the
// order score descending, id ascending, NaN as -inf; most scores fail the
// compare with the lane's worst kept one), then KP rounds of a warp arg-max
// over the lanes' heads merge them.  Rows with KP > 32 use KP passes of a
// warp arg-max over the whole row instead (registers would not hold the
// lists).  Only scores[0..n-1] of a row are read.
#include "topk.cuh"

#define TOPK_WARPS 4

extern "C" __global__ void __launch_bounds__(TOPK_WARPS * 32)
msa_topk(const float *__restrict__ scores, int nb_stride, const int *__restrict__ cu_q,
	 const int *__restrict__ cu_kv, int batch, int total_q, int *__restrict__ ids)
{
	__shared__ int pick[TOPK_WARPS][MSA_KP_ALLOC];
	const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
	const long long row = (long long)blockIdx.x * TOPK_WARPS + warp;	// h * total_q + t
	if (batch <= 0 || total_q <= 0 || row >= (long long)MSA_HKV * total_q)
		return;
	const int t = (int)(row % total_q);

	const int r = find_request(cu_q, batch, t);
	const int q_len = cu_q[r + 1] - cu_q[r], kv_len = cu_kv[r + 1] - cu_kv[r];
	const int p = kv_len - q_len + (t - cu_q[r]);
	const int n = topk_visible_blocks(p);
	const float *srow = scores + (size_t)row * nb_stride;
	int *dst = ids + (size_t)row * MSA_TOPK;

	if (MSA_KP > 0 && MSA_KP <= 32 && n > MSA_TOPK) {
		const int c0 = MSA_SINK, c1 = n - MSA_LOCAL;	// candidates c0..c1-1
		float ls[MSA_KP_ALLOC];
		int li[MSA_KP_ALLOC];
#pragma unroll
		for (int j = 0; j < MSA_KP_ALLOC; j++) {
			ls[j] = -MSA_INF;
			li[j] = 0x7fffffff;
		}
		for (int b = c0 + lane; b < c1; b += 32) {
			float s = topk_rank(__ldg(srow + b));
			if (!topk_beats(s, b, ls[MSA_KP_ALLOC - 1], li[MSA_KP_ALLOC - 1]))
				continue;
			// insertion from the tail; static indices keep it in registers
#pragma unroll
			for (int j = MSA_KP_ALLOC - 1; j > 0; j--) {
				bool up = topk_beats(s, b, ls[j - 1], li[j - 1]);
				bool here = !up && topk_beats(s, b, ls[j], li[j]);
				float ns = up ? ls[j - 1] : here ? s : ls[j];
				int ni = up ? li[j - 1] : here ? b : li[j];
				ls[j] = ns;
				li[j] = ni;
			}
			if (topk_beats(s, b, ls[0], li[0])) {
				ls[0] = s;
				li[0] = b;
			}
		}
		for (int j = 0; j < MSA_KP; j++) {
			float bs = ls[0];
			int bid = li[0];
#pragma unroll
			for (int off = 16; off >= 1; off /= 2) {
				float os = __shfl_xor_sync(0xffffffffu, bs, off);
				int oid = __shfl_xor_sync(0xffffffffu, bid, off);
				if (topk_beats(os, oid, bs, bid)) {
					bs = os;
					bid = oid;
				}
			}
			if (lane == 0)
				pick[warp][j] = bid;
			if (li[0] == bid) {	// ids are unique: only the owner pops
#pragma unroll
				for (int e = 0; e < MSA_KP_ALLOC - 1; e++) {
					ls[e] = ls[e + 1];
					li[e] = li[e + 1];
				}
				ls[MSA_KP_ALLOC - 1] = -MSA_INF;
				li[MSA_KP_ALLOC - 1] = 0x7fffffff;
			}
		}
		__syncwarp();
	} else if (MSA_KP > 0 && n > MSA_TOPK) {
		const int c0 = MSA_SINK, c1 = n - MSA_LOCAL;	// candidates c0..c1-1
		float ps = MSA_INF;	// previous pick; (+inf, -1) comes before everything
		int pid = -1;
		for (int j = 0; j < MSA_KP; j++) {
			float bs = -MSA_INF;	// (-inf, INT_MAX) comes after everything
			int bid = 0x7fffffff;
			for (int b = c0 + lane; b < c1; b += 32) {
				float s = topk_rank(srow[b]);
				if (topk_beats(ps, pid, s, b) && topk_beats(s, b, bs, bid)) {
					bs = s;
					bid = b;
				}
			}
#pragma unroll
			for (int off = 16; off >= 1; off /= 2) {
				float os = __shfl_xor_sync(0xffffffffu, bs, off);
				int oid = __shfl_xor_sync(0xffffffffu, bid, off);
				if (topk_beats(os, oid, bs, bid)) {
					bs = os;
					bid = oid;
				}
			}
			// n > TOPK leaves c1 - c0 >= KP + 1 candidates: bid is real.
			if (lane == 0)
				pick[warp][j] = bid;
			ps = bs;
			pid = bid;
		}
		__syncwarp();
	}
	write_row_ids(dst, n, [&](int j) { return pick[warp][j]; }, lane, 32);
}

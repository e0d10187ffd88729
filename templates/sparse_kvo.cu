// sparse_kvo.cu - the MSA main branch, KV-outer with query gather: one CTA
// takes one (group, KV block) tile from msa_gather_scan, i.e. up to QT
// queries that selected the block, packed with the group's G heads into 128
// rows (16 per warp); K and V of the block are read once for all of them.
// Each row writes a partial (o, lse) for its (query, slot); msa_combine
// merges the <= k partials of each (query, head).
#include "attn.cuh"

#define D MSA_D
#define BN 64
#define BK MSA_BLOCK
#define K MSA_TOPK
#define G MSA_G
#define QT (G >= 128 ? 1 : 128 / G)
#define ROWS (QT * G)
#define NWARPS (ROWS / 16)
#define NTHREADS (NWARPS * 32)
#define ES ELEM_BYTES(MSA_DT_Q)
#define MDT MMA_DT(MSA_DT_Q)

typedef u8 elem_t;
static_assert(G <= 128 && ROWS % 16 == 0, "sparse_kvo: G must be a power of two <= 128");
static_assert(BK % BN == 0, "sparse_kvo: block size is a multiple of 64");

struct smem_t {
	u16 q[ROWS * D];
	u16 k[2][BN * D];
	u16 v[2][BN * D];
	int ent[QT];	// list entries t * K + slot
	int pos[QT];	// last key each query sees
};
#ifdef MSA_SMEM_BYTES
static_assert(sizeof(smem_t) <= MSA_SMEM_BYTES, "sparse_kvo: generator's shared-memory size is too small");
#endif

extern "C" __global__ void __launch_bounds__(NTHREADS)
msa_sparse_kvo(const elem_t *__restrict__ q, const elem_t *__restrict__ k,
	       const elem_t *__restrict__ v, const int *__restrict__ cu_q,
	       const int *__restrict__ cu_kv, const int *__restrict__ blk_off, int batch, int nbt,
	       const int *__restrict__ page_table, int pt_stride, float scale_log2, float out_scale,
	       const int *__restrict__ start, const int *__restrict__ count,
	       const int *__restrict__ list, const int2 *__restrict__ tiles,
	       const int *__restrict__ ntiles, int t0, float *__restrict__ part_o,
	       float *__restrict__ part_lse)
{
	extern __shared__ __align__(128) unsigned char smem_raw[];
	smem_t &sm = *reinterpret_cast<smem_t *>(smem_raw);
	if ((int)blockIdx.x >= ntiles[0])
		return;
	const int2 tl = tiles[blockIdx.x];
	const int key = tl.x, first = tl.y;
	const int nq = min(QT, start[key] + count[key] - first);
	const int g = key / nbt, gb = key % nbt;
	const int r = find_request(blk_off, batch, gb);	// last request with blk_off <= gb
	const int b = gb - blk_off[r], q0 = cu_q[r], q_len = cu_q[r + 1] - q0;
	const int k0 = cu_kv[r], kv_len = cu_kv[r + 1] - k0;
	const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

	if (threadIdx.x < QT) {
		int e = threadIdx.x < nq ? list[first + threadIdx.x] : -1;
		sm.ent[threadIdx.x] = e;
		sm.pos[threadIdx.x] = e < 0 ? -1 : kv_len - q_len + (e / K - q0);
	}
	__syncthreads();
	int pmax = -1;
	for (int i = 0; i < nq; i++)
		pmax = max(pmax, sm.pos[i]);
	const int kend = min(kv_len, min(b * BK + BK, pmax + 1));
	const int ntiles_kv = kend > b * BK ? (kend - b * BK + BN - 1) / BN : 0;

	const size_t qstride = (size_t)MSA_HQ * D * ES;
	tile_load<ROWS, D, NTHREADS, MSA_DT_Q>(sm.q, q, [&](int row) -> const elem_t * {
		int i = row / G;
		if (i >= nq)
			return nullptr;
		return q + (size_t)(sm.ent[i] / K) * qstride + (size_t)(g * G + row % G) * D * ES;
	});
	auto krow = [&](const elem_t *base, int n0) {
		return [=](int rr) -> const elem_t * {
			int j = n0 + rr;
			if (j >= kend)
				return nullptr;
			if (!page_table)
				return base + ((size_t)(k0 + j) * MSA_HKV + g) * D * ES;
			size_t page = (size_t)page_table[(size_t)r * pt_stride + j / BK];
			return base + ((page * MSA_HKV + g) * BK + j % BK) * D * ES;
		};
	};
	auto tstart = [&](int it) { return b * BK + it * BN; };
	auto rows = [&](const void *base, int n0) { return krow((const elem_t *)base, n0); };
	attend_prologue<D, BN, NTHREADS, MSA_DT_Q>(sm.k, sm.v, q, k, v, ntiles_kv, tstart, rows);

	u32 qa[D / 16][4];
	load_a_frags<D>(qa, sm.q, warp * 16, lane);
	float o[D / 8][4];
	zero_acc<D>(o);
	row_state st;
	row_state_init(st);
	const int row_a = warp * 16 + lane / 4;
	const int lim[2] = {sm.pos[min(row_a / G, QT - 1)], sm.pos[min((row_a + 8) / G, QT - 1)]};
	attend_tiles<D, BN, BN, NTHREADS, MSA_DT_Q>(
		sm.k, sm.v, q, k, v, ntiles_kv, tstart, rows,
		[](int) { return false; },
		[&](int half, int j) { return j <= lim[half] && j < kend; }, 0, scale_log2, qa, st, o, lane);

#pragma unroll
	for (int half = 0; half < 2; half++) {
		float inv;
		const float l = row_finish(st, half, inv);
		const int row = row_a + half * 8, i = row / G;
		if (i >= nq)
			continue;
		const int e = sm.ent[i], t = e / K, slot = e % K;
		const size_t at = (((size_t)(t - t0) * MSA_HKV + g) * K + slot) * G + row % G;
		store_row_f32<D>(o, half, inv * out_scale, part_o + at * D, lane);
		if (lane % 4 == 0)
			part_lse[at] = l;
	}
}

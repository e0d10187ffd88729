// sparse_kvo90.cu - the MSA main branch on sm_90a, KV-outer with query
// gather: one CTA takes TPC consecutive tiles from msa_gather_scan (sorted
// by key, so mostly one (group, KV block) key: K and V load once per key);
// a tile is up to QT = 128 / G queries that selected the block, packed with
// the group's G heads into 128 rows; two warpgroups own 64 rows each.  Q rows (gathered)
// and the block's 128 keys of K and V arrive by cp.async in the 128-byte
// swizzled layout (hopper.cuh); S = Q K^T and O = P V are wgmma chains with
// P in registers.  One block per tile means one softmax pass, no rescaling.
// Each row writes its partial (o in bf16, lse in fp32) for (query, slot) in
// msa_combine's mode-2 layout: sparse_kvo.cu's, at half the bytes.
#include "attn.cuh"
#include "hopper.cuh"

#define D MSA_D
#define BK MSA_BLOCK
#define K MSA_TOPK
#define G MSA_G
#define QT (128 / G)
#define NTHREADS 256
#ifndef MSA_TUNE_TILES_PER_CTA
#define MSA_TUNE_TILES_PER_CTA 4
#endif
#define TPC MSA_TUNE_TILES_PER_CTA	// consecutive tiles per CTA: K and V load once per key
#define TBYTES (128 * D * 2)

typedef u8 elem_t;
static_assert(MSA_DT_Q == MSA_DT_KV && MSA_DT_Q != 2, "sparse_kvo90: q and kv of one 16-bit type");
static_assert(BK == 128 && G <= 128 && 128 % G == 0, "sparse_kvo90: block 128, G a power of two <= 128");
static_assert(D == 64 || D == 128, "sparse_kvo90: head dim 64 or 128");
#ifdef MSA_SMEM_BYTES
static_assert(1024 + 3 * TBYTES + 8 * QT <= MSA_SMEM_BYTES, "sparse_kvo90: shared memory too small");
#endif

extern "C" __global__ void __launch_bounds__(NTHREADS, 2)
msa_sparse_kvo90(const elem_t *__restrict__ q, const elem_t *__restrict__ k,
		 const elem_t *__restrict__ v, const int *__restrict__ cu_q,
		 const int *__restrict__ cu_kv, const int *__restrict__ blk_off, int batch, int nbt,
		 const int *__restrict__ page_table, int pt_stride, float scale_log2, float out_scale,
		 const int *__restrict__ start, const int *__restrict__ count,
		 const int *__restrict__ list, const int2 *__restrict__ tiles,
		 const int *__restrict__ ntiles, int t0, u16 *__restrict__ part_o,
		 float *__restrict__ part_lse)
{
	extern __shared__ __align__(1024) unsigned char smem_raw[];
	const u32 sq = (smem_u32(smem_raw) + 1023) & ~1023u, sk = sq + TBYTES, sv = sk + TBYTES;
	int *ent = reinterpret_cast<int *>(smem_raw + (sv + TBYTES - smem_u32(smem_raw)));	// t * K + slot
	int *pos = ent + QT;	// last key each query sees
	const int tbeg = blockIdx.x * TPC, tend = min(tbeg + TPC, ntiles[0]);
	const int cw = threadIdx.x / 128, lane = threadIdx.x % 32, warp = (threadIdx.x / 32) % 4;
	const int row_a = cw * 64 + warp * 16 + lane / 4;	// this thread's rows row_a, row_a + 8
	constexpr size_t qstride = (size_t)MSA_HQ * D * 2;
	int cur = -1;	// the key whose K and V are in shared memory
	for (int ti = tbeg; ti < tend; ti++) {
		const int2 tl = tiles[ti];
		const int key = tl.x, first = tl.y;
		const int nq = min(QT, start[key] + count[key] - first);
		const int g = key / nbt, gb = key % nbt;
		const int r = find_request(blk_off, batch, gb);	// last request with blk_off <= gb
		const int b = gb - blk_off[r], q0 = cu_q[r], q_len = cu_q[r + 1] - q0;
		const int k0 = cu_kv[r], kv_len = cu_kv[r + 1] - k0;
		const int kend = min(kv_len, b * BK + BK);

		__syncthreads();	// the previous tile is done with every buffer
		// Queries and the last key each sees; K and V rows past kend load as 0.
		if (threadIdx.x < QT) {
			const int e = threadIdx.x < nq ? list[first + threadIdx.x] : -1;
			ent[threadIdx.x] = e;
			pos[threadIdx.x] = e < 0 ? -1 : kv_len - q_len + (e / K - q0);
		}
		auto kvrow = [&](const elem_t *base) {
			return [=](int rr) -> const elem_t * {
				int j = b * BK + rr;
				if (j >= kend)
					return nullptr;
				if (!page_table)
					return base + ((size_t)(k0 + j) * MSA_HKV + g) * D * 2;
				size_t page = (size_t)page_table[(size_t)r * pt_stride + b];
				return base + ((page * MSA_HKV + g) * BK + rr) * D * 2;
			};
		};
		// The list entry of row i's query, read straight from the list (ent is
		// not yet visible to every thread).
		load_sw128<128, D, NTHREADS>(sq, q, [&](int row) -> const elem_t * {
			int i = row / G;
			if (i >= nq)
				return nullptr;
			return q + (size_t)(list[first + i] / K) * qstride + (size_t)(g * G + row % G) * D * 2;
		});
		const bool reload = key != cur;	// consecutive tiles mostly share a key
		if (reload)
			load_sw128<128, D, NTHREADS>(sk, q, kvrow(k));
		cp_async_commit();
		if (reload)
			load_sw128<128, D, NTHREADS>(sv, q, kvrow(v));
		cp_async_commit();
		cur = key;
		cp_async_wait<1>();
		fence_async();
		__syncthreads();

		const int lim[2] = {pos[min(row_a / G, QT - 1)], pos[min((row_a + 8) / G, QT - 1)]};
		float sc[16][4];
		wgmma_fence();
		wg_qk<D, 128>(sc, sq + cw * 64 * 128, sk);
		wgmma_commit();
		wgmma_wait<0>();
		reg_fence<64>(&sc[0][0]);

		// One block: one softmax step from an empty state.
		scale_mask<128>(sc, scale_log2, lane, [&](int half, int col) {
			const int j = b * BK + col;
			return j <= lim[half] && j < kend;
		});
		row_state st;
		row_state_init(st);
		u32 pa[8][4];
		float alpha[2];	// 0: nothing to rescale
		softmax_step<128, MSA_DT_Q>(sc, st, pa, alpha);

		cp_async_wait<0>();
		fence_async();
		__syncthreads();
		float o[D / 8][4];
		wgmma_fence();
		wg_pv<D, 128>(o, pa, sv, 0);
		wgmma_commit();
		wgmma_wait<0>();
		reg_fence<D / 2>(&o[0][0]);
		// the group again (not kept live across P V: registers are tight)
		const int gs = __ldcg(&tiles[ti].x) / nbt;

#pragma unroll
		for (int half = 0; half < 2; half++) {
			float inv;
			const float l = row_finish(st, half, inv);
			const int row = row_a + half * 8, en = ent[row / G];	// -1: no query
			if (en < 0)
				continue;
			const int t = en / K, slot = en % K;
			const size_t at = (((size_t)(t - t0) * MSA_HKV + gs) * K + slot) * G + row % G;
			store_row<D, 0>(o, half, inv * out_scale, part_o + at * D, lane);
			if (lane % 4 == 0)
				part_lse[at] = l;
		}
	}
}

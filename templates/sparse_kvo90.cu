// sparse_kvo90.cu - the MSA main branch on sm_90a, KV-outer with query
// gather: one CTA takes TPC consecutive tiles from msa_gather_scan (sorted
// by key, so mostly one (group, KV block) key: K and V load once per key);
// a tile is up to QT = 128 / G queries that selected the block, packed with
// the group's G heads into 128 rows; two warpgroups own 64 rows each.  Q rows (gathered)
// and the block's 128 keys of K and V arrive by cp.async in the 128-byte
// swizzled layout (hopper.cuh); S = Q K^T and O = P V are wgmma chains with
// P in registers.  One block per tile means one softmax pass, no rescaling.
// The CTA first reads where each of its tiles comes from (tile, key and
// request metadata, the queries' list entries) into shared memory, all
// tiles at once, so no tile waits on a chain of dependent global loads;
// with G >= 8 one thread gathers a tile's Q rows by TMA (a box of a query's
// G heads, per 128-byte column block) instead of every thread generating
// cp.async addresses chunk by chunk, and K and V always come by TMA (boxes
// of 64 columns x 128 keys from tensor maps over the contiguous or the
// paged cache); then the next tile's loads start as soon as this tile is
// done with a buffer: its Q rows (and K, for a new key) once S = Q K^T is
// in registers, its V (for a new key) once O = P V is, so the gathers
// overlap the softmax, the products and the partial stores.  A block's
// keys past the request's end arrive as whatever the cache holds there:
// S masks them, and V's rows there are zeroed before P V.
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
#define MW 10	// ints of tile metadata
#define QTMA (G >= 8)	// a query's box starts on a 1024-byte swizzle atom
static_assert(1024 + 3 * TBYTES + 4 * TPC * (MW + 2 * QT) + 24 <= MSA_SMEM_BYTES, "sparse_kvo90: shared memory too small");
#endif

extern "C" __global__ void __launch_bounds__(NTHREADS, 2)
msa_sparse_kvo90(const __grid_constant__ tmap_t tq, const __grid_constant__ tmap_t tk,
		 const __grid_constant__ tmap_t tv, const elem_t *__restrict__ q, const elem_t *__restrict__ k,
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
	// Per tile j of this CTA: MW ints of metadata (key, group, request, block
	// in the request, request's first key, end of the block's keys, first
	// list index, queries, position shift), then QT list entries (t * K +
	// slot, -1 past the last query) and QT last-visible keys.
	int *meta = reinterpret_cast<int *>(smem_raw + (sv + TBYTES - smem_u32(smem_raw)));
	int *ents = meta + TPC * MW, *poss = ents + TPC * QT;
	const u32 bq = smem_u32(poss + TPC * QT);	// Q landed (TMA), one phase per tile
	const u32 bk = bq + 8, bv = bq + 16;	// K, V landed, one phase per key
	const int tbeg = blockIdx.x * TPC, tend = min(tbeg + TPC, ntiles[0]);
	const int cw = threadIdx.x / 128, lane = threadIdx.x % 32, warp = (threadIdx.x / 32) % 4;
	const int row_a = cw * 64 + warp * 16 + lane / 4;	// this thread's rows row_a, row_a + 8
	constexpr size_t qstride = (size_t)MSA_HQ * D * 2;
	if (tbeg >= tend)
		return;

	if (threadIdx.x < tend - tbeg) {
		int *m = meta + threadIdx.x * MW;
		const int2 tl = tiles[tbeg + threadIdx.x];
		const int key = tl.x, gb = key % nbt;
		const int r = find_request(blk_off, batch, gb);	// last request with blk_off <= gb
		const int b = gb - blk_off[r], q0 = cu_q[r], q_len = cu_q[r + 1] - q0;
		const int k0 = cu_kv[r], kv_len = cu_kv[r + 1] - k0;
		m[0] = key;
		m[1] = key / nbt;
		m[2] = r;
		m[3] = b;
		m[4] = k0;
		m[5] = min(kv_len, b * BK + BK);
		m[6] = tl.y;
		m[7] = min(QT, start[key] + count[key] - tl.y);
		m[8] = kv_len - q_len - q0;	// last visible key of token t: t + shift
	}
	if (threadIdx.x == 0) {
		mbar_init(bq, 1);
		mbar_init(bk, 1);
		mbar_init(bv, 1);
		asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
		if (QTMA)
			tma_prefetch_map(&tq);
		tma_prefetch_map(&tk);
		tma_prefetch_map(&tv);
	}
	__syncthreads();
	for (int x = threadIdx.x; x < (tend - tbeg) * QT; x += NTHREADS) {
		const int *m = meta + x / QT * MW;
		const int i = x % QT;
		const int e = i < m[7] ? list[m[6] + i] : -1;
		ents[x] = e;
		poss[x] = e < 0 ? -1 : e / K + m[8];
	}
	__syncthreads();

	// K or V block of tile j by TMA (thread 0): the contiguous cache's map is
	// [token][head][D] (boxes 64 x 1 head x 128 tokens), the paged one's
	// [page x head][BK][D] (boxes 64 x 128 rows x 1).
	auto load_kv = [&](u32 dst, int j, const tmap_t *map, u32 bar) {
		const int *m = meta + j * MW;
		const int g = m[1], r = m[2], b = m[3], k0 = m[4];
		mbar_expect_tx(bar, TBYTES);
		const int page = page_table ? page_table[(size_t)r * pt_stride + b] : 0;
#pragma unroll
		for (int a = 0; a < D / 64; a++) {
			if (page_table)
				tma_load_3d(dst + a * (128 * 128), map, bar, a * 64, 0, page * MSA_HKV + g);
			else
				tma_load_3d(dst + a * (128 * 128), map, bar, a * 64, g, k0 + b * BK);
		}
	};
	// Q rows of tile j: its queries' G heads of the group.  By TMA, rows of
	// absent queries keep stale values: their rows of S, P and O are
	// never stored, and no row's softmax reads another's.
	auto load_q = [&](int j) {
		const int g = meta[j * MW + 1], *ent = ents + j * QT;
		if (QTMA) {
			if (threadIdx.x == 0) {
				const int nq = meta[j * MW + 7];
				mbar_expect_tx(bq, (u32)nq * G * D * 2);
				for (int i = 0; i < nq; i++)
#pragma unroll
					for (int a = 0; a < D / 64; a++)
						tma_load_3d(sq + a * (128 * 128) + i * G * 128, &tq, bq, a * 64, g * G,
							    ent[i] / K);
			}
			return;
		}
		load_sw128<128, D, NTHREADS>(sq, q, [&](int row) -> const elem_t * {
			const int e = ent[row / G];
			if (e < 0)
				return nullptr;
			return q + (size_t)(e / K) * qstride + (size_t)(g * G + row % G) * D * 2;
		});
	};

	// cp.async (Q with G < 8) has one group in flight: the next tile's Q.
	// K and V: phase kv of bk and bv is the kv-th key's (keys change
	// between tiles only, uniformly).
	load_q(0);
	cp_async_commit();
	if (threadIdx.x == 0) {
		load_kv(sk, 0, &tk, bk);
		load_kv(sv, 0, &tv, bv);
	}
	int kv = 0;
	for (int j = 0; j < tend - tbeg; j++) {
		const int *m = meta + j * MW, *ent = ents + j * QT, *pos = poss + j * QT;
		const bool more = j + 1 < tend - tbeg;
		const bool reload = more && meta[(j + 1) * MW] != m[0];	// consecutive tiles mostly share a key
		const bool fresh = j == 0 || meta[(j - 1) * MW] != m[0];	// K and V just loaded
		cp_async_wait<0>();	// Q (cp.async) of this tile
		fence_async();
		if (QTMA)
			mbar_wait(bq, j & 1);
		__syncthreads();
		if (fresh)
			mbar_wait(bk, kv & 1);

		const int lim[2] = {pos[min(row_a / G, QT - 1)], pos[min((row_a + 8) / G, QT - 1)]};
		float sc[16][4];
		wgmma_fence();
		wg_qk<D, 128>(sc, sq + cw * 64 * 128, sk);
		wgmma_commit();
		wgmma_wait<0>();
		reg_fence<64>(&sc[0][0]);
		if (more) {	// the next tile's Q, and K when its key differs
			__syncthreads();	// every warpgroup is done with Q and K
			load_q(j + 1);
			if (reload && threadIdx.x == 0)
				load_kv(sk, j + 1, &tk, bk);
		}
		cp_async_commit();

		// One block: one softmax step from an empty state.
		const int b = m[3], kend = m[5];
		scale_mask<128>(sc, scale_log2, lane, [&](int half, int col) {
			const int jj = b * BK + col;
			return jj <= lim[half] && jj < kend;
		});
		row_state st;
		row_state_init(st);
		u32 pa[8][4];
		float alpha[2];	// 0: nothing to rescale
		softmax_step<128, MSA_DT_Q>(sc, st, pa, alpha);

		if (fresh) {
			mbar_wait(bv, kv & 1);
			kv++;
			if (kend - b * BK < BK) {	// past the request's end: zeros, not garbage
				const int n0 = kend - b * BK;
				for (int x = threadIdx.x; x < (BK - n0) * D / 8; x += NTHREADS) {
					const int rr = n0 + x / (D / 8), ch = x % (D / 8);
					st_shared_zero16(sv + (ch / 8) * (128 * 128) + rr * 128 + (((ch % 8) ^ (rr % 8)) << 4));
				}
				fence_async();
				__syncthreads();
			}
		}
		float o[D / 8][4];
		wgmma_fence();
		wg_pv<D, 128>(o, pa, sv, 0);
		wgmma_commit();
		wgmma_wait<0>();
		reg_fence<D / 2>(&o[0][0]);
		if (reload) {	// every warpgroup must be done with V first
			__syncthreads();
			if (threadIdx.x == 0)
				load_kv(sv, j + 1, &tv, bv);
		}

		const int g = m[1];
#pragma unroll
		for (int half = 0; half < 2; half++) {
			float inv;
			const float l = row_finish(st, half, inv);
			const int row = row_a + half * 8, en = ent[row / G];	// -1: no query
			if (en < 0)
				continue;
			const int tq = en / K, slot = en % K;
			const size_t at = (((size_t)(tq - t0) * MSA_HKV + g) * K + slot) * G + row % G;
			store_row<D, 0>(o, half, inv * out_scale, part_o + at * D, lane);
			if (lane % 4 == 0)
				part_lse[at] = l;
		}
	}
}

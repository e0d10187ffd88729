// sparse_kvo90.cu - the MSA main branch on sm_90a, KV-outer with query
// gather.  msa_gather_scan cuts each (group, KV block) key's list of
// queries into tiles of up to QT = 128 / G queries, sorted by key; a tile's
// queries with the group's G heads make 128 rows, two consumer warpgroups
// own 64 rows each.  S = Q K^T and O = P V are wgmma chains with P in
// registers; one block per tile means one softmax pass, no rescaling.
// Each row writes its partial (o in bf16, lse in fp32) for (query, slot) in
// msa_combine's mode-2 layout.  A block's keys past the request's end
// arrive as whatever the cache holds there: S masks them, and V's rows there
// are zeroed before P V.
//
// G >= 8 (a query's G heads start a 1024-byte swizzle atom, so TMA can
// gather its Q rows): warp-specialised and persistent.  One CTA per SM
// walks chunks of TPC consecutive tiles (chunk blockIdx.x, then every
// gridDim.x-th, so the CTAs in flight stay near each other in the sorted
// list and share the queries' Q rows in L2).  Warpgroup 0 is the producer:
// its warp 1 reads each chunk's metadata (tiles, requests, list entries,
// pages) into one of two shared-memory slots, a chunk ahead; its thread 0
// gathers Q by TMA into a ring of NQ stages and loads K and V of each new
// key by TMA into a ring of two, so the loads run ahead of the products.
// Full/empty mbarriers with parity waits hand slots and stages over.  The
// two consumer warpgroups take turns issuing S and P V (ping-pong), so one's
// softmax and stores run under the other's products; a warp whose rows see
// every key of the block skips the per-score mask, and the scale goes into
// the exp2's FFMA.  A tile's o is written into its Q stage in Q's swizzled
// layout and leaves by TMA stores (a box per query and 64 columns), after
// which the stage is free for the next Q.
//
// G < 8: two CTAs of two warpgroups per SM; a CTA reads its TPC tiles'
// metadata at once, then Q by cp.async and K, V by TMA, the next tile's
// loads issued as soon as a buffer frees.
#include "attn.cuh"
#include "hopper.cuh"

#define D MSA_D
#define BK MSA_BLOCK
#define K MSA_TOPK
#define G MSA_G
#define QT (128 / G)
#ifndef MSA_TUNE_TILES_PER_CTA
#define MSA_TUNE_TILES_PER_CTA 4
#endif
#define TPC MSA_TUNE_TILES_PER_CTA	// consecutive tiles per CTA: K and V load once per key
#define TBYTES (128 * D * 2)

typedef u8 elem_t;
static_assert(MSA_DT_Q == MSA_DT_KV && MSA_DT_Q != 2, "sparse_kvo90: q and kv of one 16-bit type");
static_assert(BK == 128 && G <= 128 && 128 % G == 0, "sparse_kvo90: block 128, G a power of two <= 128");
static_assert(D == 64 || D == 128, "sparse_kvo90: head dim 64 or 128");

// Both kernels below take the same arguments: tensor maps of q, k, v and the
// partial o (the G < 8 kernel uses k and v only), then the tensors.
#define KVO90_PARAMS                                                                                     \
	const __grid_constant__ tmap_t tq, const __grid_constant__ tmap_t tk,                            \
		const __grid_constant__ tmap_t tv, const __grid_constant__ tmap_t to,                    \
		const elem_t *__restrict__ q, const elem_t *__restrict__ k, const elem_t *__restrict__ v, \
		const int *__restrict__ cu_q, const int *__restrict__ cu_kv,                             \
		const int *__restrict__ blk_off, int batch, int nbt, const int *__restrict__ page_table,  \
		int pt_stride, float scale_log2, float out_scale, const int *__restrict__ start,          \
		const int *__restrict__ count, const int *__restrict__ list,                             \
		const int2 *__restrict__ tiles, const int *__restrict__ ntiles, int t0,                  \
		u16 *__restrict__ part_o, float *__restrict__ part_lse

#define MW 10	// ints of tile metadata

// Tile tl's metadata into m: key, group, request, block in the request,
// request's first key, end of the block's keys, first list index, queries,
// position shift (the last key token t sees is t + shift), page (paged).
__device__ __forceinline__ void tile_meta(int *m, int2 tl, int nbt, const int *blk_off, int batch, const int *cu_q,
					  const int *cu_kv, const int *start, const int *count,
					  const int *page_table, int pt_stride)
{
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
	m[8] = kv_len - q_len - q0;
	m[9] = page_table ? page_table[(size_t)r * pt_stride + b] : 0;
}

// Query i of the tile with metadata m: its list entry (t * K + slot, -1 past
// the last query) and the last key it sees (-1 for none).
__device__ __forceinline__ int2 tile_entry(const int *m, int i, const int *list)
{
	const int e = i < m[7] ? list[m[6] + i] : -1;
	return make_int2(e, e < 0 ? -1 : e / K + m[8]);
}

// K or V of the tile with metadata m by TMA: the contiguous cache's map is
// [token][head][D] (boxes 64 x 1 head x 128 tokens), the paged one's
// [page x head][BK][D] (boxes 64 x 128 rows x 1).
__device__ __forceinline__ void tile_kv_load(u32 dst, const int *m, const tmap_t *map, u32 bar, bool paged)
{
	mbar_expect_tx(bar, TBYTES);
#pragma unroll
	for (int a = 0; a < D / 64; a++) {
		if (paged)
			tma_load_3d(dst + a * (128 * 128), map, bar, a * 64, 0, m[9] * MSA_HKV + m[1]);
		else
			tma_load_3d(dst + a * (128 * 128), map, bar, a * 64, m[1], m[4] + m[3] * BK);
	}
}

// Scale block b's scores and mask those past the request's end (kend) or
// past the last key each of the thread's two rows sees (lim).
__device__ __forceinline__ void block_mask(float (&sc)[16][4], float scale, int b, int kend, const int (&lim)[2],
					   int lane)
{
	scale_mask<128>(sc, scale, lane, [&](int half, int col) {
		const int jj = b * BK + col;
		return jj <= lim[half] && jj < kend;
	});
}
#if G >= 8
// ---------------------------------------------------------------- G >= 8
#define NTHREADS 384
#define METAW (1 + TPC * (MW + 2 * QT))	// a chunk's slot: tile count, metadata, entries, positions
#define METAB (2 * 4 * METAW)
#define BARB (8 * (2 * 3 + 12))
#define RG (G < 64 ? G : 64)	// rows of a query in one warpgroup: one TMA store box
#define NQ (1024 + 7 * TBYTES + METAB + BARB <= 232448 ? 3 : 2)	// Q stages
static_assert(TPC <= 32, "sparse_kvo90: at most 32 tiles a chunk");
#ifdef MSA_SMEM_BYTES
static_assert(1024 + (NQ + 4) * TBYTES + METAB + BARB <= MSA_SMEM_BYTES, "sparse_kvo90: shared memory too small");
#endif

extern "C" __global__ void __launch_bounds__(NTHREADS, 1)
msa_sparse_kvo90(KVO90_PARAMS)
{
	(void)q;
	(void)k;
	(void)v;
	extern __shared__ __align__(1024) unsigned char smem_raw[];
	const u32 sq = (smem_u32(smem_raw) + 1023) & ~1023u, sk = sq + NQ * TBYTES, sv = sk + 2 * TBYTES;
	// Chunk slot: [0] tiles in the chunk (0: no more), then per tile MW
	// ints (tile_meta), then QT list entries per tile, then QT last-visible
	// keys per tile (tile_entry).
	int *meta = reinterpret_cast<int *>(smem_raw + (sv + 2 * TBYTES - smem_u32(smem_raw)));
	const u32 bqf = smem_u32(meta + 2 * METAW), bqe = bqf + 8 * NQ;	// Q stage full, empty
	const u32 bkf = bqe + 8 * NQ, bke = bkf + 16, bvf = bke + 16, bve = bvf + 16;	// K, V stage full, empty
	const u32 bmf = bve + 16, bme = bmf + 16;	// metadata slot full, empty
	const int wg = threadIdx.x / 128, lane = threadIdx.x % 32;
	// Chunk i's slot (tile count, metadata, entries), once it is filled.
	auto chunk_meta = [&](int i) -> const int * {
		mbar_wait(bmf + 8 * (i & 1), (i >> 1) & 1);
		return meta + (i & 1) * METAW;
	};

	if (threadIdx.x == 0) {
		for (int s = 0; s < NQ; s++) {
			mbar_init(bqf + 8 * s, 1);
			mbar_init(bqe + 8 * s, 256);
		}
		for (int s = 0; s < 2; s++) {
			mbar_init(bkf + 8 * s, 1);
			mbar_init(bvf + 8 * s, 1);
			mbar_init(bmf + 8 * s, 1);
			mbar_init(bke + 8 * s, 256);
			mbar_init(bve + 8 * s, 256);
			mbar_init(bme + 8 * s, 256);
		}
		asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
	}
	__syncthreads();

	if (wg == 0) {	// producer
		setmaxnreg_dec<40>();	// the launch gives 168 x 384; 40 x 128 + 232 x 256 fit in it
		if (threadIdx.x / 32 == 1) {	// metadata of chunk i into slot i % 2
			const int total = ntiles[0];
			for (int i = 0;; i++) {
				const int c = blockIdx.x + i * gridDim.x, slot = i & 1;
				const int nt = max(0, min(TPC, total - c * TPC));
				int *ms = meta + slot * METAW;
				if (i >= 2)
					mbar_wait(bme + 8 * slot, ((i >> 1) & 1) ^ 1);
				if (lane < nt)
					tile_meta(ms + 1 + lane * MW, tiles[c * TPC + lane], nbt, blk_off, batch, cu_q, cu_kv,
						  start, count, page_table, pt_stride);
				__syncwarp();
				for (int x = lane; x < nt * QT; x += 32) {
					const int2 ep = tile_entry(ms + 1 + x / QT * MW, x % QT, list);
					ms[1 + TPC * MW + x] = ep.x;
					ms[1 + TPC * (MW + QT) + x] = ep.y;
				}
				__syncwarp();
				if (lane == 0) {
					ms[0] = nt;
					mbar_arrive(bmf + 8 * slot);
				}
				if (nt == 0)
					break;
			}
		} else if (threadIdx.x == 0) {	// loads
			tma_prefetch_map(&tq);
			tma_prefetch_map(&tk);
			tma_prefetch_map(&tv);
			int u = 0, n = 0;	// tiles and keys so far
			for (int i = 0;; i++) {
				const int *ms = chunk_meta(i);
				const int nt = ms[0];
				if (nt == 0)
					break;
				for (int t = 0; t < nt; t++, u++) {
					const int *m = ms + 1 + t * MW, *ent = ms + 1 + TPC * MW + t * QT;
					const bool fresh = t == 0 || m[0] != m[-MW];
					const int s = u % NQ, g = m[1], nq = m[7];
					if (u >= NQ)
						mbar_wait(bqe + 8 * s, ((u / NQ) & 1) ^ 1);
					// Q rows: a box of the query's G heads per 64 columns.
					// Rows of absent queries keep stale values: their rows
					// of S, P and O are never stored, and no row's softmax
					// reads another's.
					mbar_expect_tx(bqf + 8 * s, (u32)nq * G * D * 2);
					for (int x = 0; x < nq; x++)
#pragma unroll
						for (int a = 0; a < D / 64; a++)
							tma_load_3d(sq + s * TBYTES + a * (128 * 128) + x * G * 128, &tq,
								    bqf + 8 * s, a * 64, g * G, ent[x] / K);
					if (fresh) {
						const int ks = n & 1;
						if (n >= 2)
							mbar_wait(bke + 8 * ks, ((n >> 1) & 1) ^ 1);
						tile_kv_load(sk + ks * TBYTES, m, &tk, bkf + 8 * ks, page_table);
						if (n >= 2)
							mbar_wait(bve + 8 * ks, ((n >> 1) & 1) ^ 1);
						tile_kv_load(sv + ks * TBYTES, m, &tv, bvf + 8 * ks, page_table);
						n++;
					}
				}
			}
		}
		return;
	}
	setmaxnreg_inc<232>();

	const int cw = wg - 1, warp = (threadIdx.x / 32) % 4;
	const int row_a = cw * 64 + warp * 16 + lane / 4;	// this thread's rows row_a, row_a + 8
	// Warpgroup cw issues a product after barrier 4 + cw, then lets the
	// other one go: S and P V of the two alternate on the tensor cores, and
	// each one's softmax and stores run under the other's products.
	if (cw == 1)
		named_arrive(4, 256);
	auto turn = [&]() { named_sync(4 + cw, 256); };
	auto pass = [&]() { named_arrive(5 - cw, 256); };
	int u = 0, n = 0;
	bool store_pending = false;	// this thread's last bulk store may still read its stage
	for (int i = 0;; i++) {
		const int *ms = chunk_meta(i);
		const int nt = ms[0];
		if (nt == 0)
			break;
		for (int t = 0; t < nt; t++, u++) {
			const int *m = ms + 1 + t * MW, *ent = ms + 1 + TPC * MW + t * QT, *pos = ent + TPC * QT;
			const bool fresh = t == 0 || m[0] != m[-MW], last = t == nt - 1 || m[MW] != m[0];
			n += fresh;
			const int s = u % NQ, ks = (n - 1) & 1;
			const u32 kpar = ((n - 1) >> 1) & 1;
			const int lim[2] = {pos[min(row_a / G, QT - 1)], pos[min((row_a + 8) / G, QT - 1)]};
			const int b = m[3], kend = m[5], g = m[1];
			mbar_wait(bqf + 8 * s, (u / NQ) & 1);
			if (fresh)
				mbar_wait(bkf + 8 * ks, kpar);
			float sc[16][4];
			turn();
			wgmma_fence();
			wg_qk<D, 128>(sc, sq + s * TBYTES + cw * 64 * 128, sk + ks * TBYTES);
			wgmma_commit();
			pass();
			if (store_pending) {	// the last tile's o has left its stage
				bulk_wait_read();
				mbar_arrive(bqe + 8 * ((u - 1) % NQ));
				store_pending = false;
			}
			wgmma_wait<0>();
			reg_fence<64>(&sc[0][0]);
			if (last)
				mbar_arrive(bke + 8 * ks);

			// One block: one softmax step from an empty state, the scale in
			// the exp2's FFMA.  Only a warp with a key its rows may not see
			// (the request's end, a query's own block, an absent query)
			// pays for the per-score mask.
			if (!__all_sync(~0u, b * BK + BK <= kend && lim[0] >= b * BK + BK - 1 && lim[1] >= b * BK + BK - 1))
				block_mask(sc, 1.f, b, kend, lim, lane);
			row_state st;
			row_state_init(st);
			u32 pa[8][4];
			float alpha[2];	// 0: nothing to rescale
			softmax_step<128, MSA_DT_Q, true>(sc, st, pa, alpha, scale_log2);

			if (fresh) {
				mbar_wait(bvf + 8 * ks, kpar);
				if (kend - b * BK < BK) {	// past the request's end: zeros, not garbage
					const int n0 = kend - b * BK;
					for (int x = threadIdx.x - 128; x < (BK - n0) * D / 8; x += 256) {
						const int rr = n0 + x / (D / 8), ch = x % (D / 8);
						st_shared_zero16(sv + ks * TBYTES + (ch / 8) * (128 * 128) + rr * 128 +
								 (((ch % 8) ^ (rr % 8)) << 4));
					}
					fence_async();
					named_sync(1, 256);
				}
			}
			float o[D / 8][4];
			turn();
			wgmma_fence();
			wg_pv<D, 128>(o, pa, sv + ks * TBYTES, 0);
			wgmma_commit();
			pass();
			wgmma_wait<0>();
			reg_fence<D / 2>(&o[0][0]);
			if (last)
				mbar_arrive(bve + 8 * ks);

			// o goes into this tile's Q stage (its Q rows are done), in Q's
			// swizzled layout, then out by TMA: a box of RG rows x 64
			// columns per query piece, contiguous in the partials.
			const u32 ob = sq + s * TBYTES;
#pragma unroll
			for (int half = 0; half < 2; half++) {
				float inv;
				const float l = row_finish(st, half, inv);
				const int row = row_a + half * 8, en = ent[row / G];	// -1: no query
				const float sc_o = inv * out_scale;
#pragma unroll
				for (int j = 0; j < D / 8; j++)
					st_shared_u32(ob + (j / 8) * (128 * 128) + row * 128 + (((j % 8) ^ (row % 8)) << 4) +
						      (lane % 4) * 4,
						      pack2<0>(o[j][2 * half] * sc_o, o[j][2 * half + 1] * sc_o));
				if (en >= 0 && lane % 4 == 0) {
					const int tq = en / K, slot = en % K;
					part_lse[(((size_t)(tq - t0) * MSA_HKV + g) * K + slot) * G + row % G] = l;
				}
			}
			fence_async();
			named_sync(2 + cw, 128);	// this warpgroup's rows are in
			if (threadIdx.x % 128 == 0) {
#pragma unroll
				for (int pc = 0; pc < 64 / RG; pc++) {
					const int row = cw * 64 + pc * RG, en = ent[row / G];
					if (en < 0)
						continue;
					const int tq = en / K, slot = en % K;
					const int at = ((((tq - t0) * MSA_HKV + g) * K + slot) * G + row % G);
#pragma unroll
					for (int a = 0; a < D / 64; a++)
						tma_store_2d(&to, ob + a * (128 * 128) + row * 128, a * 64, at);
				}
				bulk_commit();
				store_pending = true;
			} else {
				mbar_arrive(bqe + 8 * s);
			}
		}
		mbar_arrive(bme + 8 * (i & 1));
	}
	if (store_pending) {
		bulk_wait();
		mbar_arrive(bqe + 8 * ((u - 1) % NQ));
	}
}

#else
// ---------------------------------------------------------------- G < 8
#define NTHREADS 256
#ifdef MSA_SMEM_BYTES
static_assert(1024 + 3 * TBYTES + 4 * TPC * (MW + 2 * QT) + 24 <= MSA_SMEM_BYTES, "sparse_kvo90: shared memory too small");
#endif

extern "C" __global__ void __launch_bounds__(NTHREADS, 2)
msa_sparse_kvo90(KVO90_PARAMS)
{
	(void)tq;
	(void)to;
	extern __shared__ __align__(1024) unsigned char smem_raw[];
	const u32 sq = (smem_u32(smem_raw) + 1023) & ~1023u, sk = sq + TBYTES, sv = sk + TBYTES;
	// Per tile j of this CTA: MW ints of metadata (tile_meta), then QT list
	// entries and QT last-visible keys (tile_entry).
	int *meta = reinterpret_cast<int *>(smem_raw + (sv + TBYTES - smem_u32(smem_raw)));
	int *ents = meta + TPC * MW, *poss = ents + TPC * QT;
	const u32 bk = smem_u32(poss + TPC * QT), bv = bk + 8;	// K, V landed, one phase per key
	const int tbeg = blockIdx.x * TPC, tend = min(tbeg + TPC, ntiles[0]);
	const int cw = threadIdx.x / 128, lane = threadIdx.x % 32, warp = (threadIdx.x / 32) % 4;
	const int row_a = cw * 64 + warp * 16 + lane / 4;	// this thread's rows row_a, row_a + 8
	constexpr size_t qstride = (size_t)MSA_HQ * D * 2;
	if (tbeg >= tend)
		return;

	if (threadIdx.x < tend - tbeg)
		tile_meta(meta + threadIdx.x * MW, tiles[tbeg + threadIdx.x], nbt, blk_off, batch, cu_q, cu_kv, start,
			  count, page_table, pt_stride);
	if (threadIdx.x == 0) {
		mbar_init(bk, 1);
		mbar_init(bv, 1);
		asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
		tma_prefetch_map(&tk);
		tma_prefetch_map(&tv);
	}
	__syncthreads();
	for (int x = threadIdx.x; x < (tend - tbeg) * QT; x += NTHREADS) {
		const int2 ep = tile_entry(meta + x / QT * MW, x % QT, list);
		ents[x] = ep.x;
		poss[x] = ep.y;
	}
	__syncthreads();

	// Q rows of tile j: its queries' G heads of the group, by cp.async.
	auto load_q = [&](int j) {
		const int g = meta[j * MW + 1], *ent = ents + j * QT;
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
		tile_kv_load(sk, meta, &tk, bk, page_table);
		tile_kv_load(sv, meta, &tv, bv, page_table);
	}
	int kv = 0;
	for (int j = 0; j < tend - tbeg; j++) {
		const int *m = meta + j * MW, *ent = ents + j * QT, *pos = poss + j * QT;
		const bool more = j + 1 < tend - tbeg;
		const bool reload = more && meta[(j + 1) * MW] != m[0];	// consecutive tiles mostly share a key
		const bool fresh = j == 0 || meta[(j - 1) * MW] != m[0];	// K and V just loaded
		cp_async_wait<0>();	// Q (cp.async) of this tile
		fence_async();
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
				tile_kv_load(sk, meta + (j + 1) * MW, &tk, bk, page_table);
		}
		cp_async_commit();

		// One block: one softmax step from an empty state.
		const int b = m[3], kend = m[5];
		block_mask(sc, scale_log2, b, kend, lim, lane);
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
				tile_kv_load(sv, meta + (j + 1) * MW, &tv, bv, page_table);
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
#endif

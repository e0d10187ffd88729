// dense_fwd90.cu - dense GQA attention forward for sm_90a (Hopper).
//
// One CTA takes 128 queries of one (request, query head) and three
// warpgroups: warpgroup 0 is the producer (one thread drives TMA, the rest
// give their registers away with setmaxnreg), warpgroups 1 and 2 each own
// 64 query rows.  Q, then K and V tiles of 128 keys, arrive by TMA in a
// ring of 2 or 3 stages (tunable) of 128-byte-swizzled shared memory;
// full/empty mbarriers with parity waits hand the stages between producer
// and consumers.
// S = Q K^T is one wgmma chain from shared memory; after the online softmax
// (exp2, scale folded in) P stays in registers as the A operand of the
// wgmma chain O += P V.  Within a warpgroup S of the next tile is issued
// with P V of the current one, so the softmax overlaps the products; the
// two consumer warpgroups interleave on top of that.  Persistent CTAs keep
// that pipeline going from one item to the next: Q has two buffers (when
// shared memory holds them), and S of the next item's first tile is issued
// with P V of this item's last one, before this item's rows are stored.
//
// Split tail (persistent, non-causal): when the items do not fill the last
// wave of CTAs, the last ntail = items - nfull items are each split over
// tsplit key ranges.  Such a part writes its rows' partial (o, lse) in fp32
// ([tsplit][ntail * 128 rows]); part 0 also writes each row's output index
// (token * Hq + head, -1 past q_len) to rowmap, and msa_combine (mode 4)
// merges them.  The last wave then takes a share of an item instead of a
// whole one (at 8K non-causal, 4096 items on 132 SMs: 31 waves and 4
// items).
#include "attn.cuh"
#include "hopper.cuh"

#define BM 128
#define BN 128
#define D MSA_D
#ifndef MSA_TUNE_STAGES
#define MSA_TUNE_STAGES 2
#endif
#define NST MSA_TUNE_STAGES	// K and V ring stages
#ifndef MSA_TUNE_SCHED
#define MSA_TUNE_SCHED 3
#endif
#define PINGPONG (MSA_TUNE_SCHED & 1)	// consumer warpgroups take turns issuing
#define PERSIST (MSA_TUNE_SCHED & 2)	// one CTA per SM walks the tiles
#define NTHREADS 384
#define QBYTES (BM * D * 2)
#define KVBYTES (BN * D * 2)
// Q buffers: two when they fit beside the ring (the generator's size, gen/emit.c, agrees)
#define NQB (1024 + 2 * QBYTES + 2 * NST * KVBYTES + 8 * (4 + 4 * NST) + 8 <= 232448 ? 2 : 1)

typedef dtype_traits<MSA_DT_OUT>::T out_t;

static_assert(MSA_DT_Q == MSA_DT_KV && MSA_DT_Q != 2, "dense_fwd90: q and kv of one 16-bit type");
static_assert(D == 64 || D == 128, "dense_fwd90: head dim 64 or 128");
#ifdef MSA_SMEM_BYTES
static_assert(1024 + NQB * QBYTES + 2 * NST * KVBYTES + 8 * (2 * NQB + 4 * NST) + 4 * NQB <= MSA_SMEM_BYTES,
	      "dense_fwd90: generator's shared-memory size is too small");
#endif

extern "C" __global__ void __launch_bounds__(NTHREADS, 1)
msa_dense_fwd90(const __grid_constant__ tmap_t tq, const __grid_constant__ tmap_t tk,
		const __grid_constant__ tmap_t tv, out_t *__restrict__ out, float *__restrict__ lse,
		const int *__restrict__ cu_q, const int *__restrict__ cu_kv, float scale_log2,
		float out_scale, int causal, int mtiles, int batch, int *__restrict__ ctr, int nfull,
		int tsplit, float *__restrict__ part_o, float *__restrict__ part_lse, int *__restrict__ rowmap)
{
	extern __shared__ __align__(1024) unsigned char smem_raw[];
	const u32 sq = (smem_u32(smem_raw) + 1023) & ~1023u;
	const u32 sk = sq + NQB * QBYTES, sv = sk + NST * KVBYTES, sb = sv + NST * KVBYTES;
	// barriers: q full[NQB], q empty[NQB], k full[NST], v full[NST], k empty[NST], v empty[NST]
	const u32 bq = sb, bqe = sb + 8 * NQB, bkf = sb + 16 * NQB, bvf = bkf + 8 * NST, bke = bvf + 8 * NST,
		  bve = bke + 8 * NST;
	// the work items the producer hands the consumers (persistent), one a Q buffer
	volatile int *slot = reinterpret_cast<volatile int *>(smem_raw + (bve + 8 * NST - smem_u32(smem_raw)));
	const int wg = threadIdx.x / 128;

	if (threadIdx.x == 0) {
		for (int b = 0; b < NQB; b++) {
			mbar_init(bq + 8 * b, 1);
			mbar_init(bqe + 8 * b, 256);
		}
		for (int s = 0; s < NST; s++) {
			mbar_init(bkf + 8 * s, 1);
			mbar_init(bvf + 8 * s, 1);
			mbar_init(bke + 8 * s, 256);
			mbar_init(bve + 8 * s, 256);
		}
		asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
	}
	__syncthreads();

	// Work items: (query tile, head, request), one per CTA, or persistent:
	// one CTA per SM, the producer taking item blockIdx.x and then the next
	// of a global counter, of request x kv head x tile x G heads (slowest
	// first): the CTAs in flight share one kv head's K and V in L2, causal
	// tiles with the most keys come first, and an SM that runs ahead takes
	// more.  The last CTA out zeroes the counter for the next launch.
#if PERSIST
	const int nitems = nfull + (mtiles * MSA_HQ * batch - nfull) * tsplit;
#endif
	struct work {
		int hq, hk, q0, q_len, k0, kv_len, m0, shift, ntiles;
		int buf;	// its Q buffer
		int kt0;	// first key tile (a split-tail part starts inside the item)
		int part;	// split-tail part (0 .. tsplit-1), or -1: a whole item
		int tail;	// split-tail item (0 .. ntail-1)
	};
	auto decode = [&](int i, work &w) {
		w.part = -1;
		w.tail = 0;
#if PERSIST
		if (i >= nfull) {
			w.tail = (i - nfull) / tsplit;
			w.part = (i - nfull) % tsplit;
			i = nfull + w.tail;
		}
		const int r = i / MSA_G, t = r % mtiles, hk = r / mtiles % MSA_HKV, b = r / mtiles / MSA_HKV;
		const int tile = causal ? mtiles - 1 - t : t;
		w.hq = hk * MSA_G + i % MSA_G;
#else
		(void)i;
		const int tile = causal ? (int)gridDim.x - 1 - (int)blockIdx.x : (int)blockIdx.x, b = blockIdx.z;
		w.hq = blockIdx.y;
#endif
		w.hk = w.hq / MSA_G;
		w.q0 = cu_q[b];
		w.q_len = cu_q[b + 1] - w.q0;
		w.k0 = cu_kv[b];
		w.kv_len = cu_kv[b + 1] - w.k0;
		w.m0 = tile * BM;
		w.shift = w.kv_len - w.q_len;	// bottom-right causal offset
		int kend = w.kv_len;
		if (causal)
			kend = min(w.kv_len, w.shift + min(w.m0 + BM, w.q_len));
		w.ntiles = kend > 0 ? (kend + BN - 1) / BN : 0;
		w.kt0 = 0;
		if (w.part >= 0) {	// key tiles [kt0, kt1) of the item
			const int kt1 = (w.part + 1) * w.ntiles / tsplit;
			w.kt0 = w.part * w.ntiles / tsplit;
			w.ntiles = kt1 - w.kt0;
		}
		if (w.m0 >= w.q_len)
			w.ntiles = -1;	// no rows: nothing to do
	};

	if (wg == 0) {	// producer
		setmaxnreg_dec<32>();	// the launch gives 168 x 384; 32 x 128 + 232 x 256 fit in it
		if (threadIdx.x != 0)
			return;
		tma_prefetch_map(&tq);
		tma_prefetch_map(&tk);
		tma_prefetch_map(&tv);
		// Tile g (counted over all items) of K or V into its stage, once
		// the consumers free it.
		auto load = [&](int g, int key, int hk, const tmap_t *map, u32 ring, u32 full, u32 empty) {
			const int s = g % NST;
			if (g >= NST)
				mbar_wait(empty + 8 * s, ((g / NST) & 1) ^ 1);
			mbar_expect_tx(full + 8 * s, KVBYTES);
#pragma unroll
			for (int a = 0; a < D / 64; a++)
				tma_load_3d(ring + s * KVBYTES + a * BN * 128, map, full + 8 * s, a * 64, hk, key);
		};
		auto load_q = [&](const work &w, int b) {
			mbar_expect_tx(bq + 8 * b, QBYTES);
#pragma unroll
			for (int a = 0; a < D / 64; a++)
				tma_load_3d(sq + b * QBYTES + a * BM * 128, &tq, bq + 8 * b, a * 64, w.hq, w.q0 + w.m0);
		};
		int g = 0;
		work w;
#if PERSIST
		// Item j (the last one -1: no more) goes to slot j % NQB once the
		// consumers are done with item j - NQB's Q in that buffer; the Q
		// barrier completes by Q's bytes, or at once for an item without
		// keys.
		for (int j = 0, item = blockIdx.x;; j++, item = gridDim.x + atomicAdd(ctr, 1)) {
			const int b = j % NQB;
			if (item < nitems)
				decode(item, w);
			if (j >= NQB)
				mbar_wait(bqe + 8 * b, (j / NQB - 1) & 1);
			slot[b] = item < nitems ? item : -1;
			if (item < nitems && w.ntiles > 0)
				load_q(w, b);
			else
				mbar_arrive(bq + 8 * b);
			if (item >= nitems)
				break;
#else
		decode(0, w);
		if (w.ntiles > 0) {
			load_q(w, 0);
#endif
			for (int it = 0; it < w.ntiles; it++, g++) {
				load(g, w.k0 + (w.kt0 + it) * BN, w.hk, &tk, sk, bkf, bke);
				load(g, w.k0 + (w.kt0 + it) * BN, w.hk, &tv, sv, bvf, bve);
			}
		}
#if PERSIST
		__threadfence();
		if (atomicAdd(ctr + 1, 1) == (int)gridDim.x - 1) {
			atomicExch(ctr, 0);
			atomicExch(ctr + 1, 0);
		}
#endif
		return;
	}
	setmaxnreg_inc<232>();

	const int cw = wg - 1, lane = threadIdx.x % 32, warp = (threadIdx.x / 32) % 4;
#if PINGPONG
	// Warpgroup cw issues its products after barrier 1 + cw, then lets the
	// other one go: one warpgroup's softmax runs under the other's products.
	if (cw == 1)
		named_arrive(1, 256);
	auto turn = [&]() { named_sync(1 + cw, 256); };
	auto pass = [&]() { named_arrive(2 - cw, 256); };
#else
	auto turn = [&]() {};
	auto pass = [&]() {};
#endif
	// The next item (false: none): its slot once its Q barrier completes.
	int j = 0;
	auto fetch = [&](work &w) {
#if PERSIST
		const int b = j % NQB;
		mbar_wait(bq + 8 * b, (j / NQB) & 1);
		const int item = slot[b];
		if (item < 0)
			return false;
		decode(item, w);
		w.buf = b;
		if (w.ntiles <= 0)
			mbar_arrive(bqe + 8 * b);
#else
		if (j > 0)
			return false;
		decode(0, w);
		w.buf = 0;
		if (w.ntiles > 0)
			mbar_wait(bq, 0);
#endif
		j++;
		return true;
	};
	// Mask S of tile it of item w: only tiles not wholly visible to the
	// warpgroup's rows pay for the per-score test.  The softmax scales the
	// logits inside its exp2.
	auto mask = [&](const work &w, float (&sc)[BN / 8][4], int it) {
		const int n0 = (w.kt0 + it) * BN, rbase = w.m0 + cw * 64;
		const int lim_a = causal ? w.shift + rbase + warp * 16 + lane / 4 : w.kv_len - 1;
		if (!(n0 + BN <= w.kv_len && (!causal || n0 + BN - 1 <= w.shift + rbase)))
			scale_mask<BN>(sc, 1.f, lane, [&](int half, int col) {
				const int jj = n0 + col;
				return jj < w.kv_len && jj <= lim_a + (causal ? half * 8 : 0);
			});
	};
	// S of item w's tile in ring slot gi (counted over all items)
	auto issue_qk = [&](const work &w, float (&sc)[BN / 8][4], int gi) {
		const int s = gi % NST;
		mbar_wait(bkf + 8 * s, (gi / NST) & 1);
		wgmma_fence();
		wg_qk<D, BM>(sc, sq + w.buf * QBYTES + cw * 64 * 128, sk + s * KVBYTES);
		wgmma_commit();
	};
	auto issue_pv = [&](float (&o)[D / 8][4], const u32 (&pa)[BN / 16][4], int gi) {
		const int s = gi % NST;
		mbar_wait(bvf + 8 * s, (gi / NST) & 1);
		wgmma_fence();
		wg_pv<D, BN>(o, pa, sv + s * KVBYTES, 1);
		wgmma_commit();
	};
	// S of tile it (ring slot gi) is in: free its K stage, and Q after the
	// item's last tile.
	auto s_done = [&](const work &w, int it, int gi) {
		mbar_arrive(bke + 8 * (gi % NST));
		if (it == w.ntiles - 1)
			mbar_arrive(bqe + 8 * w.buf);
	};
	// Item w's rows: store_lse writes their lse (l) and returns the index
	// of the thread's first row (the second is 8 rows on) and in nrows how
	// many of the two to store, in out or, for a split-tail part, in its
	// partials (then both, -inf when the range saw no key; part 0 also
	// writes the rows' output indices); store_o writes o there, normalised
	// (inv: 1 / sum).
	auto store_lse = [&](const work &w, const float (&l)[2], int &nrows) {
		const int row_a = w.m0 + cw * 64 + warp * 16 + lane / 4;
		const int trows = (mtiles * MSA_HQ * batch - nfull) * BM;
		int at0 = -1;
		nrows = w.part >= 0 ? 2 : (row_a < w.q_len) + (row_a + 8 < w.q_len);
#pragma unroll
		for (int h = 0; h < 2; h++) {
			const int row = row_a + h * 8;
			if (w.part < 0) {
				const int at = row < w.q_len ? (w.q0 + row) * MSA_HQ + w.hq : -1;
				if (at >= 0 && lane % 4 == 0)
					lse[at] = l[h];
				at0 = h == 0 ? at : at0;
				continue;
			}
			const int tr = w.tail * BM + (row - w.m0), at = w.part * trows + tr;
			at0 = h == 0 ? at : at0;
			if (lane % 4 == 0) {
				part_lse[at] = l[h];
				if (w.part == 0)
					rowmap[tr] = row < w.q_len ? (w.q0 + row) * MSA_HQ + w.hq : -1;
			}
		}
		return at0;
	};
	auto store_o = [&](int at0, int nrows, bool part, const float (&o)[D / 8][4], const float (&inv)[2]) {
#pragma unroll
		for (int h = 0; h < 2; h++) {
			if (h >= nrows)
				break;
			if (part)
				store_row_f32<D>(o, h, inv[h] * out_scale, part_o + (size_t)(at0 + h * 8) * D, lane);
			else
				store_row<D, MSA_DT_OUT>(o, h, inv[h] * out_scale,
							 out + ((size_t)at0 + h * 8 * MSA_HQ) * D, lane);
		}
	};

	float o[D / 8][4];
	row_state st;
	u32 pa[BN / 16][4], pb[BN / 16][4];
	float sc[BN / 8][4], alpha[2], l[2], inv[2];
	// One step of item w: S of tile it with P V of tile it-1 (P in pin);
	// tile it's P goes to pout.  Two P buffers alternate, so no register is
	// copied.  The softmax of tile it waits only for S, and the rescale of
	// O (by tile it's new max) only for P V.
	auto step = [&](const work &w, int g, int it, const u32 (&pin)[BN / 16][4], u32 (&pout)[BN / 16][4]) {
		turn();
		issue_qk(w, sc, g + it);
		issue_pv(o, pin, g + it - 1);
		pass();
		wgmma_wait<1>();
		reg_fence<BN / 2>(&sc[0][0]);
		s_done(w, it, g + it);
		mask(w, sc, it);
		softmax_step<BN, MSA_DT_Q, true>(sc, st, pout, alpha, scale_log2);
		wgmma_wait<0>();
		reg_fence<D / 2>(&o[0][0]);
		mbar_arrive(bve + 8 * ((g + it - 1) % NST));
		// most tiles leave every row's max where it was
		if (__any_sync(~0u, alpha[0] != 1.f || alpha[1] != 1.f))
			rescale_rows<D>(o, alpha);
	};
	int g = 0;		// ring slot of the item's first tile
	bool started = false;	// the item's first tile is in: S done, its P in pa
	work w;
	for (bool more = fetch(w); more;) {
		if (w.ntiles < 0) {	// no rows; a split-tail item's rows go nowhere
			for (int h = 0; h < 2 && w.part == 0 && lane % 4 == 0; h++)
				rowmap[w.tail * BM + cw * 64 + warp * 16 + lane / 4 + h * 8] = -1;
			more = fetch(w);
			continue;
		}
		if (w.ntiles == 0) {	// no keys: zeros and -inf
			zero_acc<D>(o);
			l[0] = l[1] = -MSA_INF;
			inv[0] = inv[1] = 0.f;
			int nrows;
			const int at0 = store_lse(w, l, nrows);
			store_o(at0, nrows, w.part >= 0, o, inv);
			more = fetch(w);
			continue;
		}
		if (!started) {
			zero_acc<D>(o);
			row_state_init(st);
			turn();
			issue_qk(w, sc, g);
			pass();
			wgmma_wait<0>();
			reg_fence<BN / 2>(&sc[0][0]);
			s_done(w, 0, g);
			mask(w, sc, 0);
			softmax_step<BN, MSA_DT_Q, true>(sc, st, pa, alpha, scale_log2);
		}
		for (int it = 1; it < w.ntiles; it += 2) {
			step(w, g, it, pa, pb);
			if (it + 1 < w.ntiles)
				step(w, g, it + 1, pb, pa);
		}
		// The last tile's P V is still to come: P in pb when the item has
		// an even count of tiles, else in pa.  The rows' lse (and a split
		// part's row map) leave now, o once that P V is in.
		const bool odd = w.ntiles & 1;
		const int glast = g + w.ntiles - 1;
#pragma unroll
		for (int h = 0; h < 2; h++)
			l[h] = row_finish(st, h, inv[h]);
		int nrows;
		const int at0 = store_lse(w, l, nrows);
		const bool part = w.part >= 0;
		// With two Q buffers the next item's Q is in by now (it loaded
		// while this item ran): its first S goes with this P V.
		work nx;
		started = false;
		if (NQB > 1) {
			more = fetch(nx);
			started = more && nx.ntiles > 0;
		}
		auto fused = [&](const u32 (&pin)[BN / 16][4], u32 (&pout)[BN / 16][4]) {
			turn();
			issue_qk(nx, sc, glast + 1);
			issue_pv(o, pin, glast);
			pass();
			wgmma_wait<1>();
			reg_fence<BN / 2>(&sc[0][0]);
			s_done(nx, 0, glast + 1);
			row_state_init(st);
			mask(nx, sc, 0);
			softmax_step<BN, MSA_DT_Q, true>(sc, st, pout, alpha, scale_log2);
			wgmma_wait<0>();
			reg_fence<D / 2>(&o[0][0]);
		};
		if (started && odd) {
			fused(pa, pb);
		} else if (started) {
			fused(pb, pa);
		} else {
			turn();
			if (odd)
				issue_pv(o, pa, glast);
			else
				issue_pv(o, pb, glast);
			pass();
			wgmma_wait<0>();
			reg_fence<D / 2>(&o[0][0]);
		}
		mbar_arrive(bve + 8 * (glast % NST));
		store_o(at0, nrows, part, o, inv);
		if (NQB == 1)	// one Q buffer: the next Q loaded once this item's last S was done
			more = fetch(nx);
		if (started) {
			zero_acc<D>(o);
			if (odd) {	// the next item's loop starts from pa
#pragma unroll
				for (int i = 0; i < BN / 16; i++)
#pragma unroll
					for (int e = 0; e < 4; e++)
						pa[i][e] = pb[i][e];
			}
		}
		g += w.ntiles;
		w = nx;
	}
}

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
// two consumer warpgroups interleave on top of that.
#include "attn.cuh"
#include "hopper.cuh"

#define BM 128
#define BN 128
#define D MSA_D
#ifndef MSA_TUNE_STAGES
#define MSA_TUNE_STAGES 2
#endif
#define NST MSA_TUNE_STAGES	// K and V ring stages
#define NTHREADS 384
#define QBYTES (BM * D * 2)
#define KVBYTES (BN * D * 2)

typedef dtype_traits<MSA_DT_OUT>::T out_t;

static_assert(MSA_DT_Q == MSA_DT_KV && MSA_DT_Q != 2, "dense_fwd90: q and kv of one 16-bit type");
static_assert(D == 64 || D == 128, "dense_fwd90: head dim 64 or 128");
#ifdef MSA_SMEM_BYTES
static_assert(1024 + QBYTES + 2 * NST * KVBYTES + 8 * (1 + 4 * NST) <= MSA_SMEM_BYTES,
	      "dense_fwd90: generator's shared-memory size is too small");
#endif

extern "C" __global__ void __launch_bounds__(NTHREADS, 1)
msa_dense_fwd90(const __grid_constant__ tmap_t tq, const __grid_constant__ tmap_t tk,
		const __grid_constant__ tmap_t tv, out_t *__restrict__ out, float *__restrict__ lse,
		const int *__restrict__ cu_q, const int *__restrict__ cu_kv, float scale_log2,
		float out_scale, int causal)
{
	extern __shared__ __align__(1024) unsigned char smem_raw[];
	const u32 sq = (smem_u32(smem_raw) + 1023) & ~1023u;
	const u32 sk = sq + QBYTES, sv = sk + NST * KVBYTES, sb = sv + NST * KVBYTES;
	// barriers: q, k full[NST], v full[NST], k empty[NST], v empty[NST]
	const u32 bq = sb, bkf = sb + 8, bvf = bkf + 8 * NST, bke = bvf + 8 * NST, bve = bke + 8 * NST;

	// Causal tiles with the most keys start first.
	const int tile = causal ? (int)gridDim.x - 1 - (int)blockIdx.x : (int)blockIdx.x;
	const int hq = blockIdx.y, b = blockIdx.z, hk = hq / MSA_G;
	const int q0 = cu_q[b], q_len = cu_q[b + 1] - q0;
	const int k0 = cu_kv[b], kv_len = cu_kv[b + 1] - k0;
	const int m0 = tile * BM;
	if (m0 >= q_len)
		return;
	const int shift = kv_len - q_len;	// bottom-right causal offset
	int kend = kv_len;
	if (causal)
		kend = min(kv_len, shift + min(m0 + BM, q_len));
	const int ntiles = kend > 0 ? (kend + BN - 1) / BN : 0;
	const int wg = threadIdx.x / 128;

	if (threadIdx.x == 0) {
		mbar_init(bq, 1);
		for (int s = 0; s < NST; s++) {
			mbar_init(bkf + 8 * s, 1);
			mbar_init(bvf + 8 * s, 1);
			mbar_init(bke + 8 * s, 256);
			mbar_init(bve + 8 * s, 256);
		}
		asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
	}
	__syncthreads();

	if (wg == 0) {	// producer
		setmaxnreg_dec<24>();
		if (threadIdx.x == 0 && ntiles > 0) {
			tma_prefetch_map(&tq);
			tma_prefetch_map(&tk);
			tma_prefetch_map(&tv);
			mbar_expect_tx(bq, QBYTES);
#pragma unroll
			for (int a = 0; a < D / 64; a++)
				tma_load_3d(sq + a * BM * 128, &tq, bq, a * 64, hq, q0 + m0);
			// Tile it of K or V into its stage, once the consumers free it.
			auto load = [&](int it, const tmap_t *map, u32 ring, u32 full, u32 empty) {
				const int s = it % NST;
				if (it >= NST)
					mbar_wait(empty + 8 * s, ((it / NST) & 1) ^ 1);
				mbar_expect_tx(full + 8 * s, KVBYTES);
#pragma unroll
				for (int a = 0; a < D / 64; a++)
					tma_load_3d(ring + s * KVBYTES + a * BN * 128, map, full + 8 * s, a * 64, hk,
						    k0 + it * BN);
			};
			for (int it = 0; it < ntiles; it++) {
				load(it, &tk, sk, bkf, bke);
				load(it, &tv, sv, bvf, bve);
			}
		}
		return;
	}
	setmaxnreg_inc<240>();

	const int cw = wg - 1, lane = threadIdx.x % 32, warp = (threadIdx.x / 32) % 4;
	const int rbase = m0 + cw * 64;			// this warpgroup's first row
	const int row_a = rbase + warp * 16 + lane / 4;	// this thread's two rows
	const int lim_a = causal ? shift + row_a : kv_len - 1;
	const u32 qtile = sq + cw * 64 * 128;
	float o[D / 8][4];
	zero_acc<D>(o);
	row_state st;
	row_state_init(st);
	if (ntiles > 0)
		mbar_wait(bq, 0);

	// Scale and mask S of tile it (keys n0 ..): only tiles not wholly visible
	// to the warpgroup's rows pay for the per-score test.
	auto mask = [&](float (&sc)[BN / 8][4], int it) {
		const int n0 = it * BN;
		if (n0 + BN <= kv_len && (!causal || n0 + BN - 1 <= shift + rbase))
			scale_mask<BN>(sc, scale_log2, lane, [](int, int) { return true; });
		else
			scale_mask<BN>(sc, scale_log2, lane, [&](int half, int col) {
				const int j = n0 + col;
				return j < kv_len && j <= lim_a + (causal ? half * 8 : 0);
			});
	};
	auto issue_qk = [&](float (&sc)[BN / 8][4], int it) {
		const int s = it % NST;
		mbar_wait(bkf + 8 * s, (it / NST) & 1);
		wgmma_fence();
		wg_qk<D, BM>(sc, qtile, sk + s * KVBYTES);
		wgmma_commit();
	};
	auto issue_pv = [&](const u32 (&pa)[BN / 16][4], int it) {
		const int s = it % NST;
		mbar_wait(bvf + 8 * s, (it / NST) & 1);
		wgmma_fence();
		wg_pv<D, BN>(o, pa, sv + s * KVBYTES, 1);
		wgmma_commit();
	};

	// Software pipeline: S of tile it runs on the tensor cores together with
	// P V of tile it-1; the softmax of tile it waits only for S, and the
	// rescale of O (by tile it's new max) only for P V.
	u32 pa[BN / 16][4];
	float sc[BN / 8][4], alpha[2];
	if (ntiles > 0) {
		issue_qk(sc, 0);
		wgmma_wait<0>();
		reg_fence<BN / 2>(&sc[0][0]);
		mbar_arrive(bke);
		mask(sc, 0);
		softmax_step<BN, MSA_DT_Q>(sc, st, pa, alpha);
	}
	// One step: S of tile it with P V of tile it-1 (P in pin); tile it's P
	// goes to pout.  Two P buffers alternate, so no register is copied.
	auto step = [&](int it, const u32 (&pin)[BN / 16][4], u32 (&pout)[BN / 16][4]) {
		issue_qk(sc, it);
		issue_pv(pin, it - 1);
		wgmma_wait<1>();
		reg_fence<BN / 2>(&sc[0][0]);
		mbar_arrive(bke + 8 * (it % NST));
		mask(sc, it);
		softmax_step<BN, MSA_DT_Q>(sc, st, pout, alpha);
		wgmma_wait<0>();
		reg_fence<D / 2>(&o[0][0]);
		mbar_arrive(bve + 8 * ((it - 1) % NST));
		rescale_rows<D>(o, alpha);
	};
	u32 pb[BN / 16][4];
	for (int it = 1; it < ntiles; it += 2) {
		step(it, pa, pb);
		if (it + 1 < ntiles)
			step(it + 1, pb, pa);
	}
	if (ntiles > 0) {
		if ((ntiles - 1) % 2)
			issue_pv(pb, ntiles - 1);
		else
			issue_pv(pa, ntiles - 1);
		wgmma_wait<0>();
		reg_fence<D / 2>(&o[0][0]);
		mbar_arrive(bve + 8 * ((ntiles - 1) % NST));
	}

	store_dense_rows<D, MSA_DT_OUT>(st, o, row_a, q_len, q0, hq, out_scale, out, lse, lane);
}

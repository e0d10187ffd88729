// index_topk.cu - the index branch (MSA.md section 1) fused with top-k
// (section 2), or, with MSA_WRITE_SCORES = 1, the block scores alone.
//
// One CTA takes 64 consecutive queries of one (request, index head); each of
// its 4 warps owns 16 rows, holds their Q fragments in registers and walks
// the keys 0 .. p(last valid query of the CTA) in sub-tiles of 64 keys
// (a block of Bk = 64 or 128 keys is 1 or 2 sub-tiles).  K tiles stream
// through a two-stage cp.async ring; S = Q K^T uses mma.sync m16n8k16.  Each
// thread keeps the running max of its two rows over the visible keys of the
// current block; at the end of a block the quad (4 lanes of a row) reduces
// it and lane%4 == 0 either stores it (index_scores) or inserts it into the
// row's streaming top-KP list in shared memory (index_topk).
//
// fp8 e4m3: raw bytes stream through a two-stage cp.async ring and are
// widened in shared memory to fp16 bits, h = (b & 0x80) << 8 | (b & 0x7f) << 7
// (exact, value / 256 for normals and subnormals), so the dot products come
// out / 65536 and the scale folds that back.
//
// Launch: grid (ceil(max_q_len / 64), Hi, batch) -- gridDim.z must be the
// batch (total_q is read as cu_q[gridDim.z]); 128 threads; dynamic shared
// memory sizeof(itk_smem_t) = 384*Di + (MSA_WRITE_SCORES ? 0 : 512*max(KP,1))
// bytes (the generator passes 384*Di + 512*max(KP,1) + 256), above 48 KB
// only after cudaFuncAttributeMaxDynamicSharedMemorySize.  Every output
// entry of a valid row is written: no zero-init needed (index_scores needs
// nb_stride >= ceil(max kv_len / Bk); columns past that get -inf too).
#include "attn.cuh"
#include "topk.cuh"

#ifndef MSA_WRITE_SCORES
#define MSA_WRITE_SCORES 0
#endif

#define ITK_BM 64	// queries per CTA
#define ITK_BN 64	// keys per sub-tile
#define ITK_NT 128	// threads
#define ITK_DI MSA_DI
#define ITK_BK MSA_BLOCK
#define ITK_FP8 (MSA_DT_INDEX == 2)
#define ITK_MDT (MSA_DT_INDEX == 2 ? 1 : MSA_DT_INDEX)	// mma type: fp8 runs as fp16
#define ITK_ES (MSA_DT_INDEX == 2 ? 1 : 2)	// bytes per stored element
#define ITK_ROWB (ITK_DI * ITK_ES)	// bytes per global row

static_assert(ITK_DI == 64 || ITK_DI == 128, "index_topk: index head dim 64 or 128");
static_assert(ITK_BK % ITK_BN == 0, "index_topk: block size must be a multiple of 64");
static_assert(MSA_DT_INDEX >= 0 && MSA_DT_INDEX <= 2, "index_topk: index dtype bf16, fp16 or fp8");
#ifdef MSA_THREADS
static_assert(MSA_THREADS == ITK_NT, "index_topk: launch with 128 threads");
#endif

// Shared memory: 384*Di bytes of tiles (+ 512*max(KP,1) for the lists when
// MSA_WRITE_SCORES == 0).
struct itk_smem_t {
	u16 q[ITK_BM * ITK_DI];			// swizzled Q tile (fp8: widened)
	u16 k[ITK_FP8 ? 1 : 2][ITK_BN * ITK_DI];	// swizzled K tile(s)
#if ITK_FP8
	u8 raw[2][ITK_BN * ITK_DI];		// raw fp8 K ring (Q passes through raw[1])
#endif
#if !MSA_WRITE_SCORES
	float ls[MSA_KP_ALLOC * ITK_BM];	// candidate scores, [slot][row]
	int li[MSA_KP_ALLOC * ITK_BM];		// candidate ids, [slot][row]
#endif
};
#ifdef MSA_SMEM_BYTES
static_assert(sizeof(itk_smem_t) <= MSA_SMEM_BYTES, "index_topk: generator's shared-memory size is too small");
#endif

// cp.async ROWS rows of a 16-bit [ROWS][COLS] swizzled tile; rowptr(r) gives
// the row's global byte address or nullptr for a zero row.
template <int ROWS, int COLS, typename F>
__device__ __forceinline__ void itk_load16(u16 *tile, const void *any, F rowptr)
{
	const int chunks = COLS / 8;	// 16-byte chunks per row
	for (int i = threadIdx.x; i < ROWS * chunks; i += ITK_NT) {
		int r = i / chunks, c = i % chunks;
		const u8 *p = (const u8 *)rowptr(r);
		cp_async16(smem_u32(tile) + swz<COLS>(r, c * 8), p ? (const void *)(p + c * 16) : any,
			   p ? 16 : 0);
	}
}

// cp.async ROWS rows of BYTES raw bytes into a plain [ROWS][BYTES] buffer.
template <int ROWS, int BYTES, typename F>
__device__ __forceinline__ void itk_load_raw(u8 *buf, const void *any, F rowptr)
{
	const int chunks = BYTES / 16;
	for (int i = threadIdx.x; i < ROWS * chunks; i += ITK_NT) {
		int r = i / chunks, c = i % chunks;
		const u8 *p = (const u8 *)rowptr(r);
		cp_async16(smem_u32(buf + r * BYTES + c * 16), p ? (const void *)(p + c * 16) : any,
			   p ? 16 : 0);
	}
}

// Two e4m3 bytes at byte positions lo, lo+1 of x -> fp16x2 bits (value/256).
template <int SEL>
__device__ __forceinline__ u32 itk_e4m3x2(u32 x)
{
	u32 v = __byte_perm(x, 0u, SEL);	// each byte moved into the high byte of its 16-bit half
	return (v & 0x80008000u) | ((v & 0x7f007f00u) >> 1);
}

// Widen a raw [ROWS][COLS] e4m3 buffer into a swizzled fp16 [ROWS][COLS] tile.
template <int ROWS, int COLS>
__device__ __forceinline__ void itk_widen(u16 *tile, const u8 *buf)
{
	const int pieces = COLS / 8;	// 8 elements: 8 bytes in, 16 bytes out
	for (int i = threadIdx.x; i < ROWS * pieces; i += ITK_NT) {
		int r = i / pieces, c = i % pieces;
		uint2 w = *reinterpret_cast<const uint2 *>(buf + r * COLS + c * 8);
		uint4 o;
		o.x = itk_e4m3x2<0x1404>(w.x);
		o.y = itk_e4m3x2<0x3424>(w.x);
		o.z = itk_e4m3x2<0x1404>(w.y);
		o.w = itk_e4m3x2<0x3424>(w.y);
		*reinterpret_cast<uint4 *>(reinterpret_cast<u8 *>(tile) + swz<COLS>(r, c * 8)) = o;
	}
}

extern "C" __global__ void __launch_bounds__(ITK_NT, 4)
msa_index_topk(const void *__restrict__ qi, const void *__restrict__ ki,
	       const int *__restrict__ cu_q, const int *__restrict__ cu_kv,
	       const int *__restrict__ page_table, int pt_stride, float score_scale,
	       int *__restrict__ ids, float *__restrict__ scores, int nb_stride, int ksplit)
{
	extern __shared__ __align__(128) unsigned char smem_raw[];
	itk_smem_t &sm = *reinterpret_cast<itk_smem_t *>(smem_raw);
	// index_scores may split a request's blocks over ksplit CTAs (decode:
	// few queries, long contexts); grid.x = query tiles x ksplit.
	const int ks = MSA_WRITE_SCORES ? blockIdx.x % ksplit : 0;
	const int m0 = (MSA_WRITE_SCORES ? blockIdx.x / ksplit : blockIdx.x) * ITK_BM;
	const int h = blockIdx.y, req = blockIdx.z;
	const int q0 = cu_q[req], q_len = cu_q[req + 1] - q0;
	if (m0 >= q_len)
		return;
	const int k0 = cu_kv[req], kv_len = cu_kv[req + 1] - k0;
	const int total_q = cu_q[gridDim.z];
	const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
	const int shift = kv_len - q_len;	// p(i) = shift + i

	// Keys 0..p_last are all the CTA can see; tiles of 64 never straddle a block.
	const int p_last = shift + min(m0 + ITK_BM, q_len) - 1;
	const int nb = topk_visible_blocks(p_last);	// blocks visited: 0..nb-1
	const int ntiles = p_last < 0 ? 0 : p_last / ITK_BN + 1;
	int it0 = 0, it1 = ntiles;	// this CTA's tiles
	if (MSA_WRITE_SCORES && ksplit > 1) {
		const int bps = (nb + ksplit - 1) / ksplit, tpb = ITK_BK / ITK_BN;
		it0 = min(ntiles, ks * bps * tpb);
		it1 = min(ntiles, (ks + 1) * bps * tpb);
	}

	const u8 *qb = (const u8 *)qi + ((size_t)q0 * MSA_HKV + h) * ITK_ROWB;
	auto qrow = [&](int r) -> const void * {
		return m0 + r < q_len ? (const void *)(qb + (size_t)(m0 + r) * MSA_HKV * ITK_ROWB) : nullptr;
	};
	const int *pt = page_table ? page_table + (size_t)req * pt_stride : nullptr;
	// Row pointers of the 64-key tile starting at key n0 (n0 < kv_len).
	auto krow = [&](int n0) {
		const u8 *base = pt ? (const u8 *)ki + ((size_t)pt[n0 / ITK_BK] * ITK_BK + n0 % ITK_BK) * ITK_ROWB
				    : (const u8 *)ki + ((size_t)k0 + n0) * ITK_ROWB;
		const int lim = kv_len - n0;	// rows >= lim lie past the request's keys
		return [=](int r) -> const void * {
			return r < lim ? (const void *)(base + (size_t)r * ITK_ROWB) : nullptr;
		};
	};

	// Prologue: Q tile and K tile 0.
#if ITK_FP8
	itk_load_raw<ITK_BM, ITK_ROWB>(sm.raw[1], qi, qrow);
	if (it0 < it1)
		itk_load_raw<ITK_BN, ITK_ROWB>(sm.raw[0], qi, krow(it0 * ITK_BN));
	cp_async_commit();
	cp_async_wait<0>();
	__syncthreads();
	itk_widen<ITK_BM, ITK_DI>(sm.q, sm.raw[1]);
	__syncthreads();	// raw[1] is free again, sm.q is ready
#else
	itk_load16<ITK_BM, ITK_DI>(sm.q, qi, qrow);
	if (it0 < it1)
		itk_load16<ITK_BN, ITK_DI>(sm.k[0], qi, krow(it0 * ITK_BN));
	cp_async_commit();
	cp_async_wait<0>();
	__syncthreads();
#endif
	u32 qa[ITK_DI / 16][4];
	load_a_frags<ITK_DI>(qa, sm.q, warp * 16, lane);

	// This thread's rows: CTA rows rr0 and rr0 + 8 (C-fragment layout).
	const int rr0 = warp * 16 + lane / 4;
	int prow[2];
	bool valid[2];
#pragma unroll
	for (int hf = 0; hf < 2; hf++) {
		const int i = m0 + rr0 + hf * 8;
		valid[hf] = i < q_len;
		prow[hf] = shift + i;
	}
	// Position of the warp's last valid row (-1: the warp has none), to skip
	// tiles wholly in the future of all its rows (warp-uniform).
	const int wfirst = m0 + warp * 16;
	const int wlast_p = wfirst < q_len ? shift + min(wfirst + 15, q_len - 1) : -1;

#if !MSA_WRITE_SCORES
	// Streaming top-KP lists, sorted by (score desc, id asc); sentinel entries
	// (-inf, INT_MAX) come after every real candidate.  Only lane%4 == 0 of
	// the owning warp touches a row's list until the final __syncwarp.
	int nrow[2];	// visible blocks of the two rows (0 for rows past q_len)
#pragma unroll
	for (int hf = 0; hf < 2; hf++)
		nrow[hf] = valid[hf] ? topk_visible_blocks(prow[hf]) : 0;
	float thr_s[2] = {-MSA_INF, -MSA_INF};	// the list's last entry
	int thr_id[2] = {0x7fffffff, 0x7fffffff};
	if (MSA_KP > 0 && lane % 4 == 0) {
#pragma unroll
		for (int hf = 0; hf < 2; hf++)
			for (int j = 0; j < MSA_KP; j++) {
				sm.ls[j * ITK_BM + rr0 + hf * 8] = -MSA_INF;
				sm.li[j * ITK_BM + rr0 + hf * 8] = 0x7fffffff;
			}
	}
#endif

	const float sc = ITK_FP8 ? score_scale * 65536.f : score_scale;
	float bm[2] = {-MSA_INF, -MSA_INF};	// running max of the current block, unscaled

	for (int it = it0; it < it1; it++) {
		const int n0 = it * ITK_BN, st = (it - it0) & 1;	// ring stage
		cp_async_wait<0>();
		__syncthreads();	// tile it landed; everyone is done with tile it-1
#if ITK_FP8
		if (it + 1 < it1)
			itk_load_raw<ITK_BN, ITK_ROWB>(sm.raw[st ^ 1], qi, krow(n0 + ITK_BN));
		cp_async_commit();
		itk_widen<ITK_BN, ITK_DI>(sm.k[0], sm.raw[st]);
		__syncthreads();
		const u16 *kt = sm.k[0];
#else
		if (it + 1 < it1)
			itk_load16<ITK_BN, ITK_DI>(sm.k[st ^ 1], qi, krow(n0 + ITK_BN));
		cp_async_commit();
		const u16 *kt = sm.k[st];
#endif
		if (n0 <= wlast_p) {
			float s[ITK_BN / 8][4];
			qk_tile<ITK_DI, ITK_BN, ITK_MDT>(qa, kt, s, lane);
#pragma unroll
			for (int j = 0; j < ITK_BN / 8; j++)
#pragma unroll
				for (int e = 0; e < 4; e++) {
					const int key = n0 + j * 8 + 2 * (lane % 4) + (e & 1);
					if (key <= prow[e / 2])
						bm[e / 2] = fmaxf(bm[e / 2], s[j][e]);
				}
		}
		if ((n0 + ITK_BN) % ITK_BK == 0 || it == it1 - 1) {
			// Block b is complete (uniform over the CTA: all lanes shuffle).
			const int b = n0 / ITK_BK;
			float bs[2];
#pragma unroll
			for (int hf = 0; hf < 2; hf++) {
				float m = bm[hf];
				m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
				m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
				bs[hf] = m * sc;	// sc > 0: -inf stays -inf
				bm[hf] = -MSA_INF;
			}
			if (lane % 4 == 0) {
#pragma unroll
				for (int hf = 0; hf < 2; hf++) {
					const int row = rr0 + hf * 8;
#if MSA_WRITE_SCORES
					if (valid[hf] && b < nb_stride)
						scores[((size_t)h * total_q + q0 + m0 + row) * nb_stride + b] = bs[hf];
#else
					if (MSA_KP > 0 && valid[hf] && b >= MSA_SINK && b < nrow[hf] - MSA_LOCAL) {
						const float v = topk_rank(bs[hf]);
						if (topk_beats(v, b, thr_s[hf], thr_id[hf])) {
							float *ls = sm.ls + row;
							int *li = sm.li + row;
							int j = MSA_KP - 1;	// (v, b) displaces the last entry
							while (j > 0) {
								const float es = ls[(j - 1) * ITK_BM];
								const int eb = li[(j - 1) * ITK_BM];
								if (!topk_beats(v, b, es, eb))
									break;
								ls[j * ITK_BM] = es;
								li[j * ITK_BM] = eb;
								j--;
							}
							ls[j * ITK_BM] = v;
							li[j * ITK_BM] = b;
							thr_s[hf] = ls[(MSA_KP - 1) * ITK_BM];
							thr_id[hf] = li[(MSA_KP - 1) * ITK_BM];
						}
					}
#endif
				}
			}
		}
	}
	cp_async_wait<0>();

#if MSA_WRITE_SCORES
	// Blocks nb .. nb_stride-1: no row of this CTA sees them.
	for (int x = 0; x < 16 && ks == 0; x++) {
		const int i = wfirst + x;
		if (i >= q_len)
			break;
		float *srow = scores + ((size_t)h * total_q + q0 + i) * nb_stride;
		for (int b = nb + lane; b < nb_stride; b += 32)
			srow[b] = -MSA_INF;
	}
#else
	__syncwarp();	// the lists written by lane%4 == 0 are visible to the quad
#pragma unroll
	for (int hf = 0; hf < 2; hf++) {
		if (!valid[hf])
			continue;
		const int row = rr0 + hf * 8;
		int *dst = ids + ((size_t)h * total_q + q0 + m0 + row) * MSA_TOPK;
		write_row_ids(dst, nrow[hf], [&](int j) { return sm.li[j * ITK_BM + row]; }, lane % 4, 4);
	}
#endif
}

// dense_fwd.cu - dense GQA attention forward over a ragged batch.
//
// One CTA takes BLOCK_M queries of one (request, query head); each warp owns
// 16 query rows and walks the request's keys in tiles of BLOCK_N with an
// online softmax (exp2, scale folded in).  K and V tiles stream through a
// two-stage cp.async ring; QK^T and PV use mma.sync m16n8k16 with P kept in
// registers.  This is the portable sm_80+ path; the Hopper wgmma path
// replaces the inner loop later without changing the entry point.
#include "attn.cuh"

#ifndef MSA_TUNE_BLOCK_M
#define MSA_TUNE_BLOCK_M 64
#define MSA_TUNE_BLOCK_N 64
#endif

#define BM MSA_TUNE_BLOCK_M
#define BN MSA_TUNE_BLOCK_N
#define D MSA_D
#define NWARPS (BM / 16)
#define NTHREADS (NWARPS * 32)

typedef u8 elem_t;	// addressed in bytes: 16-bit or fp8 storage
typedef dtype_traits<MSA_DT_OUT>::T out_t;
#define ES ELEM_BYTES(MSA_DT_Q)
#define MDT MMA_DT(MSA_DT_Q)

static_assert(MSA_DT_Q == MSA_DT_KV, "dense_fwd: q and kv must have one type");
static_assert(D == 64 || D == 128, "dense_fwd: head dim 64 or 128");
static_assert(BM % 16 == 0 && BN % 16 == 0, "dense_fwd: tiles are multiples of 16");

struct smem_t {
	u16 q[BM * D];
	u16 k[2][BN * D];
	u16 v[2][BN * D];
};
#ifdef MSA_SMEM_BYTES
static_assert(sizeof(smem_t) <= MSA_SMEM_BYTES, "dense_fwd: generator's shared-memory size is too small");
#endif

extern "C" __global__ void __launch_bounds__(NTHREADS)
msa_dense_fwd(const elem_t *__restrict__ q, const elem_t *__restrict__ k,
	      const elem_t *__restrict__ v, out_t *__restrict__ out,
	      float *__restrict__ lse, const int *__restrict__ cu_q,
	      const int *__restrict__ cu_kv, const int *__restrict__ page_table,
	      int pt_stride, float scale_log2, float out_scale, int causal)
{
	extern __shared__ __align__(128) unsigned char smem_raw[];
	smem_t &sm = *reinterpret_cast<smem_t *>(smem_raw);
	const int tile = blockIdx.x, hq = blockIdx.y, b = blockIdx.z;
	const int hk = hq / MSA_G;
	const int q0 = cu_q[b], q_len = cu_q[b + 1] - q0;
	const int k0 = cu_kv[b], kv_len = cu_kv[b + 1] - k0;
	const int m0 = tile * BM;
	if (m0 >= q_len)
		return;
	const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
	const int shift = kv_len - q_len;	// bottom-right causal offset

	// Keys this tile can see at all.
	int kend = kv_len;
	if (causal)
		kend = min(kv_len, shift + min(m0 + BM, q_len));
	const int ntiles = kend > 0 ? (kend + BN - 1) / BN : 0;

	// Row addresses in bytes; paged KV: key j of request b is row j % BLOCK
	// of page page_table[b * pt_stride + j / BLOCK], pages [n, Hkv, BLOCK, D].
	const size_t qstride = (size_t)MSA_HQ * D * ES;
	const elem_t *qb = q + (size_t)q0 * qstride + (size_t)hq * D * ES;
	auto qrow = [&](int r) { return m0 + r < q_len ? qb + (size_t)(m0 + r) * qstride : nullptr; };
	auto krow = [&](const elem_t *base, int n0) {
		return [=](int r) -> const elem_t * {
			int j = n0 + r;
			if (j >= kv_len)
				return nullptr;
			if (!page_table)
				return base + ((size_t)(k0 + j) * MSA_HKV + hk) * D * ES;
			size_t page = (size_t)page_table[(size_t)b * pt_stride + j / MSA_BLOCK];
			return base + ((page * MSA_HKV + hk) * MSA_BLOCK + j % MSA_BLOCK) * D * ES;
		};
	};
	const elem_t *kb = k, *vb = v;

	auto tstart = [](int it) { return it * BN; };
	auto rows = [&](const void *base, int n0) { return krow((const elem_t *)base, n0); };
	tile_load<BM, D, NTHREADS, MSA_DT_Q>(sm.q, q, qrow);
	attend_prologue<D, BN, NTHREADS, MSA_DT_Q>(sm.k, sm.v, q, kb, vb, ntiles, tstart, rows);

	u32 qa[D / 16][4];
	load_a_frags<D>(qa, sm.q, warp * 16, lane);
	float o[D / 8][4];
	zero_acc<D>(o);
	row_state st;
	row_state_init(st);
	const int row_a = m0 + warp * 16 + lane / 4;	// this thread's two rows
	const int lim_a = causal ? shift + row_a : kv_len - 1;
	attend_tiles<D, BN, BN, NTHREADS, MSA_DT_Q>(
		sm.k, sm.v, q, kb, vb, ntiles, tstart, rows,
		// tiles wholly visible to the warp's rows skip the per-score mask
		[&](int n0) { return n0 + BN <= kv_len && (!causal || n0 + BN - 1 <= shift + m0 + warp * 16); },
		[&](int half, int j) { return j < kv_len && j <= lim_a + (causal ? half * 8 : 0); }, 0,
		scale_log2, qa, st, o, lane);

	store_dense_rows<D, MSA_DT_OUT>(st, o, row_a, q_len, q0, hq, out_scale, out, lse, lane);
}

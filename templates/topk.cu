// topk.cu - standalone top-k over a block-score tensor (MSA.md section 2).
//
// msa_topk: one warp per row (index head h, token t); msa_topk_rows: few
// long rows (decode), a cluster of CTAs per row (below).  The order is
// score descending, id ascending, NaN as -inf.  First a threshold: each lane's
// best candidate, and the KP-th best of those (at least KP candidates are
// at or above it).  A second pass compacts the few candidates at or above
// it into shared memory, where each is ranked against the others.  If too
// many tie with the threshold (TOPK_CAP), the row falls back (in a CTA:
// its first warp) to per-lane sorted register lists merged by KP warp
// arg-max rounds, and rows with KP > 32 use KP passes of a warp arg-max
// over the whole row (registers would not hold the lists).  Only
// scores[0..n-1] of a row are read.
#include "topk.cuh"

#define TOPK_WARPS 4
#define TOPK_CAP 256	// candidates a warp may rank in shared memory

// This thread's best candidate among c0 + first, c0 + first + step, ... <
// c1; (-inf, INT_MAX) when it has none.  Unrolled: eight independent loads
// in flight per thread (long decode rows are latency-bound otherwise).
__device__ __forceinline__ void thread_best(const float *srow, int c0, int c1, int first, int step, float &ms,
					    int &mi)
{
	ms = -MSA_INF;
	mi = 0x7fffffff;
#pragma unroll 8
	for (int b = c0 + first; b < c1; b += step) {
		float s = topk_rank(__ldg(srow + b));
		if (topk_beats(s, b, ms, mi)) {
			ms = s;
			mi = b;
		}
	}
}

// Rank each of the count compacted candidates (cs, ci) against the others
// (threads first, first + step, ...) and put the KP best in pick[rank].
__device__ __forceinline__ void rank_candidates(const float *cs, const int *ci, int count, int *pick,
						int first, int step)
{
	for (int e = first; e < count; e += step) {
		const float s = cs[e];
		const int b = ci[e];
		int r = 0;
		for (int f = 0; f < count; f++)
			r += topk_beats(cs[f], ci[f], s, b);
		if (r < MSA_KP)
			pick[r] = b;
	}
}

// Threshold select of the KP best among candidates c0..c1-1 (more than KP
// of them) into pick[0..KP-1]; false when more than TOPK_CAP candidates
// reach the threshold (ties), leaving the row to the fallback.
__device__ __forceinline__ bool threshold_select(const float *srow, int c0, int c1, int *pick,
						 float *cs, int *ci, int lane)
{
	float ms;
	int mi;
	thread_best(srow, c0, c1, lane, 32, ms, mi);
	int rk = 0;	// rank of this lane's best among the 32 lane bests
	for (int o = 0; o < 32; o++) {
		float os = __shfl_sync(0xffffffffu, ms, o);
		int oi = __shfl_sync(0xffffffffu, mi, o);
		rk += topk_beats(os, oi, ms, mi);
	}
	// more than KP candidates means at least KP real lane bests
	const int src = __ffs(__ballot_sync(0xffffffffu, rk == MSA_KP - 1)) - 1;
	const float ts = __shfl_sync(0xffffffffu, ms, src);
	const int ti = __shfl_sync(0xffffffffu, mi, src);
	int count = 0;
#pragma unroll 4
	for (int base = c0; base < c1; base += 32) {
		const int b = base + lane;
		float s = b < c1 ? topk_rank(__ldg(srow + b)) : -MSA_INF;
		bool take = b < c1 && (topk_beats(s, b, ts, ti) || b == ti);
		unsigned m = __ballot_sync(0xffffffffu, take);
		int pos = count + __popc(m & ((1u << lane) - 1));
		if (take && pos < TOPK_CAP) {
			cs[pos] = s;
			ci[pos] = b;
		}
		count += __popc(m);
	}
	if (count > TOPK_CAP)
		return false;
	__syncwarp();
	rank_candidates(cs, ci, count, pick, lane, 32);
	__syncwarp();
	return true;
}

// threshold_select for the whole CTA on one row: the threshold is the
// KP-th best of the 128 thread bests, every candidate at or above it goes to
// cs/ci (TOPK_WARPS * TOPK_CAP of them at most) through a shared counter,
// and each is ranked against the others.  Call from every thread.
__device__ __forceinline__ bool cta_threshold_select(const float *srow, int c0, int c1, int *pick,
						     float *cs, int *ci, float *bs, int *bi, int *misc)
{
	constexpr int NT = TOPK_WARPS * 32, CAP = TOPK_WARPS * TOPK_CAP;
	const int tid = threadIdx.x;
	float ms;
	int mi;
	thread_best(srow, c0, c1, tid, NT, ms, mi);
	bs[tid] = ms;
	bi[tid] = mi;
	if (tid == 0)
		misc[0] = 0;
	__syncthreads();
	// More than KP candidates: at least KP thread bests are real and have
	// distinct ranks; empty ones, (-inf, INT_MAX), rank after them all.
	int rk = 0;
	for (int o = 0; o < NT; o++)
		rk += topk_beats(bs[o], bi[o], ms, mi);
	if (rk == MSA_KP - 1) {
		misc[1] = __float_as_int(ms);
		misc[2] = mi;
	}
	__syncthreads();
	const float ts = __int_as_float(misc[1]);
	const int ti = misc[2];
#pragma unroll 4
	for (int b = c0 + tid; b < c1; b += NT) {
		const float s = topk_rank(__ldg(srow + b));
		if (topk_beats(s, b, ts, ti) || b == ti) {
			const int pos = atomicAdd(&misc[0], 1);
			if (pos < CAP) {
				cs[pos] = s;
				ci[pos] = b;
			}
		}
	}
	__syncthreads();
	const int count = misc[0];
	if (count > CAP)
		return false;
	rank_candidates(cs, ci, count, pick, tid, NT);
	__syncthreads();
	return true;
}

// The fallback, one warp: per-lane sorted register lists of the KP best
// among candidates c0..c1-1 (more than KP of them), merged by KP warp
// arg-max rounds into pick[0..KP-1].
__device__ __forceinline__ void lists_select(const float *srow, int c0, int c1, int *pick, int lane)
{
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
		warp_best(bs, bid);
		if (lane == 0)
			pick[j] = bid;
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
}

// KP > 32 (registers would not hold the lists), one warp: KP passes of a
// warp arg-max over candidates c0..c1-1 (more than KP of them).
__device__ __forceinline__ void passes_select(const float *srow, int c0, int c1, int *pick, int lane)
{
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
		warp_best(bs, bid);
		// more than KP candidates: bid is real
		if (lane == 0)
			pick[j] = bid;
		ps = bs;
		pid = bid;
	}
	__syncwarp();
}

// Row `row` (h * total_q + t) of the scores: its scores, its output and
// its visible block count (n < 0: no such row).
struct topk_row_t {
	const float *srow;
	int *dst;
	int n;
};
__device__ __forceinline__ topk_row_t topk_row(const float *scores, int nb_stride, const int *cu_q,
					       const int *cu_kv, int batch, int total_q, int *ids, long long row)
{
	if (batch <= 0 || total_q <= 0 || row >= (long long)MSA_HKV * total_q)
		return {nullptr, nullptr, -1};
	const int t = (int)(row % total_q);
	const int r = find_request(cu_q, batch, t);
	const int q_len = cu_q[r + 1] - cu_q[r], kv_len = cu_kv[r + 1] - cu_kv[r];
	return {scores + (size_t)row * nb_stride, ids + (size_t)row * MSA_TOPK,
		topk_visible_blocks(kv_len - q_len + (t - cu_q[r]))};
}

// One warp per row.
extern "C" __global__ void __launch_bounds__(TOPK_WARPS * 32, 8)
msa_topk(const float *__restrict__ scores, int nb_stride, const int *__restrict__ cu_q,
	 const int *__restrict__ cu_kv, int batch, int total_q, int *__restrict__ ids)
{
	__shared__ int pick[TOPK_WARPS][MSA_KP_ALLOC];
	__shared__ float cand_s[TOPK_WARPS][TOPK_CAP];
	__shared__ int cand_i[TOPK_WARPS][TOPK_CAP];
	const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
	const long long row = (long long)blockIdx.x * TOPK_WARPS + warp;
	const topk_row_t rw = topk_row(scores, nb_stride, cu_q, cu_kv, batch, total_q, ids, row);
	if (rw.n < 0)
		return;
	const float *srow = rw.srow;
	const int n = rw.n, c0 = MSA_SINK, c1 = n - MSA_LOCAL;	// candidates c0..c1-1
	// more candidates than slots, and lists that fit in registers
	const bool select = MSA_KP > 0 && MSA_KP <= 32 && n > MSA_TOPK;
	const bool done = select && threshold_select(srow, c0, c1, pick[warp], cand_s[warp], cand_i[warp], lane);
	if (!done && select)
		lists_select(srow, c0, c1, pick[warp], lane);
	else if (!done && MSA_KP > 0 && n > MSA_TOPK)
		passes_select(srow, c0, c1, pick[warp], lane);
	write_row_ids(rw.dst, n, [&](int j) { return pick[warp][j]; }, lane, 32);
}

#ifndef MSA_TOPK_CLUSTER_MAX
#define MSA_TOPK_CLUSTER_MAX 1
#endif

// Every CTA of the cluster (a CTA launched alone is a cluster of one from
// sm_90 on) arrives with its shared-memory writes released, and waits for
// the others.
__device__ __forceinline__ void cluster_barrier()
{
#if MSA_TOPK_CLUSTER_MAX > 1
	asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#else
	__syncthreads();
#endif
}

// This CTA's rank in its cluster and the cluster's size.
__device__ __forceinline__ void cluster_place(int &rank, int &size)
{
#if MSA_TOPK_CLUSTER_MAX > 1
	asm("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(rank));
	asm("mov.u32 %0, %%cluster_nctarank;\n" : "=r"(size));
#else
	rank = 0;
	size = 1;
#endif
}

// The 32-bit word at p in the shared memory of the cluster's CTA `rank`.
__device__ __forceinline__ u32 cluster_word(const void *p, int rank)
{
#if MSA_TOPK_CLUSTER_MAX > 1
	u32 a, v;
	asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(a) : "r"(smem_u32(p)), "r"(rank));
	asm volatile("ld.shared::cluster.b32 %0, [%1];\n" : "=r"(v) : "r"(a) : "memory");
	return v;
#else
	return *reinterpret_cast<const u32 *>(p);
#endif
}

// Few long rows (decode): a CTA per row, or a cluster of C of them (1-d
// clusters, C <= MSA_TOPK_CLUSTER_MAX, the launch's choice).  Each CTA
// takes an even share of the row's candidates and keeps its KP best (the
// threshold select, or the lists on heavy ties); then the first CTA ranks
// the cluster's lists, read from the other CTAs' shared memory.  A row's
// top-KP is within the union of the shares' top-KP, so the result is
// exact.
extern "C" __global__ void __launch_bounds__(TOPK_WARPS * 32, 8)
msa_topk_rows(const float *__restrict__ scores, int nb_stride, const int *__restrict__ cu_q,
	      const int *__restrict__ cu_kv, int batch, int total_q, int *__restrict__ ids)
{
	constexpr int NT = TOPK_WARPS * 32;
	static_assert(MSA_TOPK_CLUSTER_MAX * MSA_KP_ALLOC <= TOPK_WARPS * TOPK_CAP || MSA_KP > 32,
		      "topk: the cluster's lists fit");
	__shared__ int pick[MSA_KP_ALLOC], best_i[NT], misc[3], list_i[MSA_KP_ALLOC];
	__shared__ float cand_s[TOPK_WARPS * TOPK_CAP], best_s[NT], list_s[MSA_KP_ALLOC];
	__shared__ int cand_i[TOPK_WARPS * TOPK_CAP];
	const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
	int part, C;
	cluster_place(part, C);
	const long long row = blockIdx.x / C;	// uniform over the cluster
	const topk_row_t rw = topk_row(scores, nb_stride, cu_q, cu_kv, batch, total_q, ids, row);
	if (rw.n < 0)
		return;
	const float *srow = rw.srow;
	const int n = rw.n, c0 = MSA_SINK, c1 = n - MSA_LOCAL;	// candidates c0..c1-1
	const bool select = MSA_KP > 0 && MSA_KP <= 32 && n > MSA_TOPK;
	if (select) {
		const int a = c0 + (int)((long long)(c1 - c0) * part / C), z = c0 + (int)((long long)(c1 - c0) * (part + 1) / C);
		const bool cut = z - a > MSA_KP;	// else the list is the whole share
		if (cut && !cta_threshold_select(srow, a, z, pick, cand_s, cand_i, best_s, best_i, misc) && warp == 0)
			lists_select(srow, a, z, pick, lane);
		__syncthreads();
		for (int j = threadIdx.x; j < MSA_KP; j += NT) {
			const bool real = cut || a + j < z;
			const int b = cut ? pick[j] : a + j;
			list_s[j] = real ? topk_rank(__ldg(srow + b)) : -MSA_INF;	// (-inf, INT_MAX): after all
			list_i[j] = real ? b : 0x7fffffff;
		}
	}
	cluster_barrier();	// every share's list is in place
	if (part == 0 && select) {
		for (int e = threadIdx.x; e < C * MSA_KP; e += NT) {
			cand_s[e] = __uint_as_float(cluster_word(list_s + e % MSA_KP, e / MSA_KP));
			cand_i[e] = (int)cluster_word(list_i + e % MSA_KP, e / MSA_KP);
		}
		__syncthreads();
		rank_candidates(cand_s, cand_i, C * MSA_KP, pick, threadIdx.x, NT);
	}
	cluster_barrier();	// the lists stay until the first CTA has read them
	if (part != 0 || warp != 0)
		return;
	if (!select && MSA_KP > 0 && n > MSA_TOPK)
		passes_select(srow, c0, c1, pick, lane);
	write_row_ids(rw.dst, n, [&](int j) { return pick[j]; }, lane, 32);
}

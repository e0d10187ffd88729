// gather.cu - the plan step of the KV-outer main branch, on the GPU: for
// each pass (chunk of queries) and (group, KV block) the list of (query,
// slot) pairs that selected it, cut into tiles of QT queries (QT x G rows =
// 128 rows of one MMA tile).  Every pass is gathered at once, before the
// first pass's attention.
//
//   count: one thread per (query, group, slot)
//   scan:  one CTA per pass: exclusive scans of its counts and tile counts,
//          its tile map
//   fill:  like count, writes each pair into its list
//
// A block key is g * nbt + blk_off[r] + b, nbt = blocks of all requests;
// pass p's counters are the nkeys from p * nkeys, its tiles the max_tiles
// from p * max_tiles, its lists the list_stride entries from p * list_stride.
#include "common.cuh"

#define K MSA_TOPK
#define BK MSA_BLOCK
#define QT (MSA_G >= 128 ? 1 : 128 / MSA_G)

// The key of selection (t, g, slot), or -1 when the slot is unused, not
// visible to the query, or repeats an earlier slot.
__device__ __forceinline__ int gather_key(const int *ids, const int *cu_q, const int *cu_kv,
					  const int *blk_off, int batch, int total_q, int nbt,
					  int t, int g, int slot)
{
	const int *row = ids + ((size_t)g * total_q + t) * K;
	int b = row[slot];
	int r = find_request(cu_q, batch, t);
	int kv_len = cu_kv[r + 1] - cu_kv[r];
	int p = kv_len - (cu_q[r + 1] - cu_q[r]) + (t - cu_q[r]);
	if (b < 0 || b * BK > p || b * BK >= kv_len)
		return -1;
	for (int e = 0; e < slot; e++)
		if (row[e] == b)
			return -1;
	return g * nbt + blk_off[r] + b;
}

// Pass 0 counts, pass 1 fills; cursor must be zero before each pass.
// Query t belongs to KV-outer pass t / chunk.
extern "C" __global__ void __launch_bounds__(256)
msa_gather(const int *__restrict__ ids, const int *__restrict__ cu_q, const int *__restrict__ cu_kv,
	   const int *__restrict__ blk_off, int batch, int total_q, int nbt, int pass,
	   int *__restrict__ cursor, const int *__restrict__ start, int *__restrict__ list, int chunk, int nkeys)
{
	long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
	long n = (long)total_q * MSA_HKV * K;
	if (i >= n)
		return;
	int slot = (int)(i % K), g = (int)(i / K % MSA_HKV), t = (int)(i / K / MSA_HKV);
	int key = gather_key(ids, cu_q, cu_kv, blk_off, batch, total_q, nbt, t, g, slot);
	if (key < 0)
		return;
	long at = (long)(t / chunk) * nkeys + key;
	int pos = atomicAdd(&cursor[at], 1);
	if (pass == 1)
		list[start[at] + pos] = t * K + slot;
}

// One CTA of 1024 threads per pass.  start[key] = the pass's first list
// index plus the exclusive scan of its counts; each tile gets (key, first
// list index); ntiles[pass] = the pass's number of tiles.
extern "C" __global__ void __launch_bounds__(1024)
msa_gather_scan(const int *__restrict__ count, int nkeys, int *__restrict__ start,
		int2 *__restrict__ tiles, int max_tiles, int *__restrict__ ntiles, long list_stride)
{
	__shared__ int part[1024], tpart[1024];
	count += (long)blockIdx.x * nkeys;
	start += (long)blockIdx.x * nkeys;
	tiles += (long)blockIdx.x * max_tiles;
	ntiles += blockIdx.x;
	const int tid = threadIdx.x, per = (nkeys + 1023) / 1024;
	const int k0 = min(nkeys, tid * per), k1 = min(nkeys, k0 + per);
	int s = 0, ts = 0;
	for (int k = k0; k < k1; k++) {
		s += count[k];
		ts += (count[k] + QT - 1) / QT;
	}
	part[tid] = s;
	tpart[tid] = ts;
	__syncthreads();
	for (int off = 1; off < 1024; off *= 2) {	// inclusive Hillis-Steele scan
		int a = tid >= off ? part[tid - off] : 0, b = tid >= off ? tpart[tid - off] : 0;
		__syncthreads();
		part[tid] += a;
		tpart[tid] += b;
		__syncthreads();
	}
	s = part[tid] - s + (int)(blockIdx.x * list_stride);
	ts = tpart[tid] - ts;
	for (int k = k0; k < k1; k++) {
		int c = count[k];
		start[k] = s;
		for (int i = 0; i * QT < c && ts < max_tiles; i++)
			tiles[ts++] = make_int2(k, s + i * QT);
		s += c;
	}
	if (tid == 1023)
		ntiles[0] = min(tpart[1023], max_tiles);
}

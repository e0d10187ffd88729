/* msa.c - the MSA entry points: a plan per batch (lengths, page table,
 * workspace, split count) and run calls that only launch. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static float one_if_zero(float x)
{
	return x > 0.f ? x : 1.f;
}

/* Page ids every request needs must exist in the cache. */
static int check_pages(msa_ctx *ctx, const msa_batch *b, int block)
{
	if (!b->page_table)
		return MSA_OK;
	if (b->num_pages < 1)
		return msa_ctx_fail(ctx, MSA_EINVAL, "num_pages = %d must be >= 1 with a page table",
				    b->num_pages);
	for (int r = 0; r < b->batch; r++) {
		int kl = b->cu_kv[r + 1] - b->cu_kv[r], need = (kl + block - 1) / block;
		if (need > b->pages_per_req)
			return msa_ctx_fail(ctx, MSA_EINVAL, "request %d: kv_len %d needs %d pages, "
					    "pages_per_req is %d", r, kl, need, b->pages_per_req);
		for (int i = 0; i < need; i++) {
			int pg = b->page_table[(size_t)r * b->pages_per_req + i];
			if (pg < 0 || pg >= b->num_pages)
				return msa_ctx_fail(ctx, MSA_EINVAL, "page_table[%d][%d] = %d is outside "
						    "[0, num_pages = %d)", r, i, pg, b->num_pages);
		}
	}
	return MSA_OK;
}

/* The KV-outer kernel: the wgmma one on sm_90a unless MSAGEN_KVO=mma. */
static msa_kind kvo_kind(msa_module *m)
{
	return msa_module_wgmma(m, MSA_K_SPARSE_KVO90, "MSAGEN_KVO") ? MSA_K_SPARSE_KVO90 : MSA_K_SPARSE_KVO;
}

static int plan_kernels(msa_plan *p)
{
	msa_module *m = p->mod;
	int c = m->layer.causal, rc;
	p->kvo_bf16 = kvo_kind(m) == MSA_K_SPARSE_KVO90;
	if ((rc = msa_module_kernel(m, p->index90 ? MSA_K_INDEX_SCORES90 : MSA_K_INDEX_SCORES, c, &p->k_scores)) ||
	    (rc = msa_module_kernel(m, p->index90 ? MSA_K_INDEX_TOPK90 : MSA_K_INDEX_TOPK, c, &p->k_itopk)) ||
	    (rc = msa_module_kernel(m, MSA_K_TOPK, c, &p->k_topk)) ||
	    (rc = msa_module_kernel(m, MSA_K_COMBINE, c, &p->k_combine)))
		return rc;
	if (msa_layer_supports(&m->layer, MSA_K_SPARSE_FWD) &&
	    ((rc = msa_module_kernel(m, MSA_K_SPARSE_FWD, c, &p->k_sparse)) ||
	     (rc = msa_module_dense_kernel(m, c, p->max_q, p->paged, &p->k_dense, &p->dense_wgmma))))
		return rc;
	if (msa_layer_supports(&m->layer, MSA_K_SPARSE_KVO) &&
	    ((rc = msa_module_kernel(m, kvo_kind(m), c, &p->k_kvo)) ||
	     (rc = msa_module_kernel(m, MSA_K_GATHER, c, &p->k_gather))))
		return rc;
	return MSA_OK;
}

/* Few (query, group) pairs leave the GPU idle: split the selected 64-key
 * tiles (k x Bk / 64 of them, at most 64 splits: the combine's limit), up
 * to two CTAs per SM (one wave: a second wave would double the latency of
 * these short CTAs). */
static int pick_nsplit(const msa_plan *p, int want)
{
	const msa_layer *l = &p->mod->layer;
	long ctas = (long)p->total_q * l->heads_kv;
	int n = 1, most = l->topk * (l->block / 64);	/* the selected tiles */
	if (most > 64)
		most = 64;
	if (want > 0)
		return want < most ? want : most;
	while (n < most && ctas * n * 2 <= 2L * p->mod->sms)
		n *= 2;
	return n < most ? n : most;
}

/* Few (query tile, head, request) CTAs for long contexts: split each
 * request's blocks over CTAs; msa_attention then goes through the score
 * tensor (small for decode) instead of the fused kernel. */
static void pick_index_split(msa_plan *p)
{
	const msa_layer *l = &p->mod->layer;
	/* CTAs of one split: 64 queries x one head, or (wgmma) 128 / Hi
	 * queries x all Hi heads */
	long ctas = p->index90 ? (long)(p->max_q + 128 / l->heads_kv - 1) / (128 / l->heads_kv) * p->batch
			       : (long)(p->max_q + 63) / 64 * l->heads_kv * p->batch;
	size_t bytes = (size_t)l->heads_kv * p->total_q * p->nb_max * 4;
	p->ksplit = 1;
	/* at most one wave (a wgmma index CTA holds a whole SM) and at least
	 * 4 blocks a CTA; MSAGEN_INDEX_KSPLIT caps the count (measurements: on
	 * the H100 the b1 decode shapes lose 1-45 us with caps of 64 or 32,
	 * bench/RESULTS.md) */
	const char *most = getenv("MSAGEN_INDEX_KSPLIT");
	int cap = most ? atoi(most) : 0;
	if (cap <= 0)
		cap = 1 << 20;
	while (ctas * p->ksplit * 2 <= p->mod->sms && p->ksplit * 4 <= p->nb_max && p->ksplit * 2 <= cap)
		p->ksplit *= 2;
	/* the wgmma kernel merges its splits' lists itself when the merge's
	 * four warps have at most two rows each (q1 decode), KP <= 16 and
	 * ksplit <= 128; else the splits write scores for msa_topk.
	 * MSAGEN_INDEX_SPLIT=scores keeps scores + msa_topk (comparisons) */
	p->split_topk = p->index90 && p->ksplit > 1 && p->ksplit <= 128 && msa_layer_kp(l) <= 16 &&
			(long)p->max_q * l->heads_kv <= 8 && !msa_env_is("MSAGEN_INDEX_SPLIT", "scores");
	p->unfused = p->ksplit > 1 && !p->split_topk && bytes <= ((size_t)64 << 20);
}

/* Queries a wgmma index CTA takes: 64 rows per consumer warpgroup (one
 * producer warpgroup), the Hi heads of each query. */
static int index90_qpc(const msa_kernel *k, const msa_layer *l)
{
	return (k->threads - 128) / 2 / l->heads_kv;
}

/* Few long rows (decode): msa_topk_rows with a CTA per row, or from sm_90
 * on a cluster of up to 8 whose CTAs take at least 1024 scores each; else
 * (0) msa_topk, a warp per row. */
static int pick_topk_ctas(const msa_plan *p)
{
	const int rows = p->mod->layer.heads_kv * p->total_q, most = msa_topk_cluster(p->mod->arch);
	int c = 1;
	if (p->nb_max < 256 || rows > 2 * p->mod->sms)
		return 0;
	while (c < most && p->nb_max >= 2048 * c)
		c *= 2;
	return c;
}

static void plan_scales(msa_plan *p, const msa_batch *b)
{
	const msa_layer *l = &p->mod->layer;
	double s = l->scale, widen = 256.0;	/* fp8 -> fp16 bits divides by 256 */
	if (l->dtype_q == MSA_DT_FP8_E4M3)
		s *= one_if_zero(b->scale_q) * one_if_zero(b->scale_k) * widen * widen;
	p->scale_log2 = (float)(s / log(2.0));
	p->out_scale = l->dtype_kv == MSA_DT_FP8_E4M3 ? (float)(one_if_zero(b->scale_v) * widen) : 1.f;
	p->idx_scale = l->dtype_index == MSA_DT_FP8_E4M3
			       ? one_if_zero(b->scale_qi) * one_if_zero(b->scale_ki)
			       : 1.f;	/* the kernel folds the fp8 widening itself */
}

static int plan_upload(msa_plan *p, const msa_batch *b)
{
	const msa_layer *l = &p->mod->layer;
	const msa_cu *cu = p->mod->cu;
	msa_ctx *ctx = p->mod->ctx;
	size_t nc = sizeof(int) * (size_t)(b->batch + 1);
	size_t npt = p->paged ? sizeof(int) * (size_t)b->batch * (size_t)b->pages_per_req : 0;
	size_t nids = sizeof(int) * (size_t)l->heads_kv * (size_t)p->total_q * (size_t)l->topk;
	int rc;

	rc = msa_cu_check(cu->MemAlloc(&p->dev, 2 * nc + npt + nids + 16), "cuMemAlloc(plan)",
			  ctx->err, sizeof ctx->err);
	if (rc)
		return rc;
	p->cu_q = p->dev;
	p->cu_kv = p->dev + nc;
	p->pages = npt ? p->dev + 2 * nc : 0;
	p->ids = p->dev + 2 * nc + npt;
	p->dense_ctr = p->ids + nids;	/* the last 16 bytes: dense_fwd90's work counter */
	if ((rc = msa_cu_check(cu->MemsetD32(p->dense_ctr, 0, 4), "cuMemsetD32", ctx->err, sizeof ctx->err)))
		return rc;
	if ((rc = msa_cu_check(cu->MemcpyHtoD(p->cu_q, b->cu_q, nc), "cuMemcpyHtoD", ctx->err, sizeof ctx->err)) ||
	    (rc = msa_cu_check(cu->MemcpyHtoD(p->cu_kv, b->cu_kv, nc), "cuMemcpyHtoD", ctx->err, sizeof ctx->err)))
		return rc;
	if (npt && (rc = msa_cu_check(cu->MemcpyHtoD(p->pages, b->page_table, npt), "cuMemcpyHtoD",
				      ctx->err, sizeof ctx->err)))
		return rc;
	if (p->split_topk) {
		int kp = msa_layer_kp(l), qpc = index90_qpc(p->k_itopk, l);
		size_t lists = (size_t)l->heads_kv * p->total_q * p->ksplit * ((kp > 0 ? kp : 1) + 1) / 2 * 16;
		size_t tickets = (size_t)p->batch * ((p->max_q + qpc - 1) / qpc) * 4;
		if ((rc = msa_cu_check(cu->MemAlloc(&p->split_ws, lists + tickets + 16), "cuMemAlloc(split top-k)",
				       ctx->err, sizeof ctx->err)) ||
		    (rc = msa_cu_check(cu->MemsetD8(p->split_ws + lists, 0, tickets + 16), "cuMemsetD8",
				       ctx->err, sizeof ctx->err)))
			return rc;
	}
	if (p->unfused && (rc = msa_cu_check(cu->MemAlloc(&p->scores_ws, (size_t)l->heads_kv * p->total_q *
							   (size_t)p->nb_max * 4 + 16),
					     "cuMemAlloc(scores)", ctx->err, sizeof ctx->err)))
		return rc;
	if (p->nsplit > 1) {
		size_t rows = (size_t)p->total_q * l->heads_q * (size_t)p->nsplit;
		rc = msa_cu_check(cu->MemAlloc(&p->part_o, rows * (size_t)l->head_dim * 4 + rows * 4 + 16),
				  "cuMemAlloc(split partials)", ctx->err, sizeof ctx->err);
		p->part_lse = p->part_o + rows * (size_t)l->head_dim * 4;
	}
	return rc;
}

/* Bytes of partials per pass when the batch leaves it to the plan: a
 * 32nd of all of them, between 1 and 8 GiB, and at most a quarter of the
 * free memory (never below 1 GiB: the fixed size this replaces).  Longer
 * passes give each (group, block) key more tiles per pass, so K and V of a
 * block are loaded fewer times (sparse_kvo90 keeps them across a CTA's
 * tiles of one key); measured on the H100 at 1M tokens, 1 -> 8 GiB takes
 * the sparse kernel from 313 to 260 ms and the gather scan from 30 to 12 ms
 * (bench/RESULTS.md); 16 GiB gains nothing more. */
static size_t kvo_default_bytes(const msa_cu *cu, size_t per_q, long total_q)
{
	const size_t gib = (size_t)1 << 30;
	size_t want = per_q * (size_t)total_q / 32, free_b = 0, total_b = 0;

	want = want < gib ? gib : want > 8 * gib ? 8 * gib : want;
	if (want > gib && cu->MemGetInfo(&free_b, &total_b) == CUDA_SUCCESS && want > free_b / 4)
		want = free_b / 4 > gib ? free_b / 4 : gib;
	return want;
}

/* KV-outer workspace: per pass of `chunk` queries the gather lists, the
 * tile map and the per-(query, slot) partials (kvo_default_bytes unless the
 * batch sets the size). */
static int plan_kvo(msa_plan *p, const msa_batch *b)
{
	const msa_layer *l = &p->mod->layer;
	const msa_cu *cu = p->mod->cu;
	msa_ctx *ctx = p->mod->ctx;
	/* partials per query: o (bf16 from sparse_kvo90, else fp32) and lse */
	size_t per_q = (size_t)l->heads_q * l->topk * ((size_t)l->head_dim * (p->kvo_bf16 ? 2 : 4) + 4);
	int qt = l->group >= 128 ? 1 : 128 / l->group, rc;
	int *off = malloc(sizeof(int) * (size_t)(b->batch + 1));

	if (!off)
		return msa_ctx_fail(ctx, MSA_ENOMEM, "out of memory");
	off[0] = 0;
	for (int r = 0; r < b->batch; r++)
		off[r + 1] = off[r] + (b->cu_kv[r + 1] - b->cu_kv[r] + l->block - 1) / l->block;
	p->nbt = off[b->batch] > 0 ? off[b->batch] : 1;
	p->chunk = (int)((b->kvo_workspace ? b->kvo_workspace : kvo_default_bytes(cu, per_q, p->total_q)) / per_q);
	p->chunk = p->chunk < 1 ? 1 : p->chunk > p->total_q ? p->total_q : p->chunk;
	p->max_tiles = (int)((long)p->chunk * l->heads_kv * l->topk / qt) + l->heads_kv * p->nbt + 1;
	p->npass = (int)((p->total_q + p->chunk - 1) / p->chunk);
	/* every pass's counters, lists and tiles (gathered at once), one
	 * pass's partials */
	size_t nkeys = (size_t)l->heads_kv * p->nbt, nb = sizeof(int) * (size_t)(b->batch + 1), np = (size_t)p->npass;
	size_t bytes[] = {nb, np * nkeys * 4, np * nkeys * 4, np * p->chunk * l->heads_kv * l->topk * 4,
			  np * p->max_tiles * 8, np * 4, (size_t)p->chunk * per_q};
	if (np * p->chunk * l->heads_kv * l->topk >= (size_t)1 << 31) {
		free(off);
		return msa_ctx_fail(ctx, MSA_EINVAL, "KV-outer: %ld queries x %d groups x top-%d selections do "
				    "not fit 32-bit list indices", (long)p->total_q, l->heads_kv, l->topk);
	}
	size_t total = 0;
	for (int i = 0; i < MSA_COUNT(bytes); i++)
		total += (bytes[i] + 255) / 256 * 256;
	rc = msa_cu_check(cu->MemAlloc(&p->kvo, total), "cuMemAlloc(KV-outer workspace)", ctx->err,
			  sizeof ctx->err);
	if (rc == MSA_OK) {
		CUdeviceptr at = p->kvo, *dst[] = {&p->blk_off, &p->cursor, &p->start, &p->list,
						   &p->tiles, &p->ntiles, &p->kvo_part};
		for (int i = 0; i < MSA_COUNT(bytes); i++) {
			*dst[i] = at;
			at += (bytes[i] + 255) / 256 * 256;
		}
		rc = msa_cu_check(cu->MemcpyHtoD(p->blk_off, off, nb), "cuMemcpyHtoD", ctx->err,
				  sizeof ctx->err);
	}
	free(off);
	return rc;
}

int msa_plan_new(msa_module *mod, const msa_batch *b, msa_plan **out)
{
	msa_plan *p;
	msa_ctx *ctx;
	int rc, max_q = 0, max_kv = 0;

	if (!mod || !out)
		return mod ? msa_ctx_fail(mod->ctx, MSA_EINVAL, "msa_plan_new: out is NULL") : MSA_EINVAL;
	ctx = mod->ctx;
	*out = NULL;
	if (!b)
		return msa_ctx_fail(ctx, MSA_EINVAL, "msa_plan_new: batch is NULL");
	if ((rc = msa_check_lengths(ctx, b->batch, b->cu_q, b->cu_kv, mod->layer.causal, &max_q)) ||
	    (rc = check_pages(ctx, b, mod->layer.block)))
		return rc;
	if (!(p = calloc(1, sizeof *p)))
		return msa_ctx_fail(ctx, MSA_ENOMEM, "out of memory");
	p->mod = mod;
	p->batch = b->batch;
	p->max_q = max_q;
	p->total_q = b->cu_q[b->batch];
	p->total_kv = b->cu_kv[b->batch];
	p->paged = b->page_table != NULL;
	p->pages_per_req = b->pages_per_req;
	p->ki_rows = p->paged ? (long)b->num_pages * mod->layer.block : (long)p->total_kv;
	for (int r = 0; r < b->batch; r++)
		if (b->cu_kv[r + 1] - b->cu_kv[r] > max_kv)
			max_kv = b->cu_kv[r + 1] - b->cu_kv[r];
	p->nb_max = (max_kv + mod->layer.block - 1) / mod->layer.block;
	p->nsplit = pick_nsplit(p, b->nsplit);
	/* the wgmma index kernels (prefill and decode) unless MSAGEN_INDEX=mma */
	p->index90 = msa_module_wgmma(mod, MSA_K_INDEX_TOPK90, "MSAGEN_INDEX");
	pick_index_split(p);
	p->topk_ctas = pick_topk_ctas(p);
	plan_scales(p, b);
	if (b->sparse_mode < 0 || b->sparse_mode > 2) {
		free(p);
		return msa_ctx_fail(ctx, MSA_EINVAL, "sparse_mode = %d (0 auto, 1 query-outer, 2 KV-outer)",
				    b->sparse_mode);
	}
	p->mode = b->sparse_mode;
	if (p->mode == MSA_SPARSE_KVO && !msa_layer_supports(&mod->layer, MSA_K_SPARSE_KVO)) {
		free(p);
		return msa_ctx_fail(ctx, MSA_EUNSUPPORTED, "layer %s: the KV-outer form needs G a power "
				    "of two <= 128 and q, kv of one type", mod->layer.name);
	}
	/* Measured on the H100 (bench/RESULTS.md): with mma.sync kernels the
	 * query-outer form is as fast at 8K-128K and twice as fast at 1M, where
	 * the KV-outer form's fp32 partials dominate.  The wgmma KV-outer kernel
	 * (sm_90a, bf16 partials, K and V kept across a key's tiles) is 2.2-2.3x
	 * faster than query-outer from 8K to 1M, so prefill plans (2K queries
	 * or more) take it.  A tuned "form" record overrides either. */
	if (p->mode == MSA_SPARSE_AUTO) {
		msa_variant v;
		msa_tune_rec r;
		p->mode = kvo_kind(mod) == MSA_K_SPARSE_KVO90 && msa_layer_supports(&mod->layer, MSA_K_SPARSE_KVO) &&
				  p->max_q >= 2048 ? MSA_SPARSE_KVO : MSA_SPARSE_QO;
		msa_variant_default(&v, MSA_K_SPARSE_FWD, &mod->layer, mod->arch, mod->layer.causal);
		if (msa_layer_supports(&mod->layer, MSA_K_SPARSE_KVO) &&
		    msa_tune_lookup(ctx, &v, "form", 1, p->max_q, mod->gpu, mod->sms, &r))
			p->mode = r.cand[r.pick].tune[0] == MSA_SPARSE_KVO ? MSA_SPARSE_KVO : MSA_SPARSE_QO;
	}
	if ((rc = plan_kernels(p)) || (rc = plan_upload(p, b)) ||
	    (p->mode == MSA_SPARSE_KVO && (rc = plan_kvo(p, b)))) {
		msa_plan_free(p);
		return rc;
	}
	/* Dense attention for decode (at most 16 queries a request): the
	 * query-outer sparse kernel over every key, a CTA per (query, group) so
	 * the group's heads share each K/V load, split over the SMs like sparse
	 * decode; MSAGEN_DENSE_DECODE=tiles keeps the tile kernels (comparisons). */
	p->dense_qo = p->max_q <= 16 && p->k_sparse && !msa_env_is("MSAGEN_DENSE_DECODE", "tiles");
	/* Decode through the split index: the index kernel only writes its
	 * CTAs' lists and sparse_fwd merges each row, so the index kernel ends
	 * without the ticket and the last CTA's merge (H100, fp8 b8 128K: index
	 * 57.7 -> 51.4 us, sparse_fwd 17.7 -> 20.7; bench/RESULTS.md). */
	p->attn_merge = p->split_topk && p->mode == MSA_SPARSE_QO && p->k_sparse &&
			!msa_env_is("MSAGEN_SPLIT_MERGE", "index");
	*out = p;
	return MSA_OK;
}

void msa_plan_free(msa_plan *p)
{
	if (!p)
		return;
	if (p->dev)
		p->mod->cu->MemFree(p->dev);
	if (p->part_o)
		p->mod->cu->MemFree(p->part_o);
	if (p->kvo)
		p->mod->cu->MemFree(p->kvo);
	if (p->scores_ws)
		p->mod->cu->MemFree(p->scores_ws);
	if (p->split_ws)
		p->mod->cu->MemFree(p->split_ws);
	free(p);
}

int msa_plan_nb_max(const msa_plan *p)
{
	return p ? p->nb_max : -1;
}

int msa_plan_nsplit(const msa_plan *p)
{
	return p ? p->nsplit : -1;
}

/* NULL device pointers get a message naming the argument; names holds
 * the argument names separated by single spaces. */
static int need(msa_plan *p, const char *fn, int n, const void *const *ptrs, const char *names)
{
	if (!p)
		return MSA_EINVAL;
	for (int i = 0; i < n; i++, names += strcspn(names, " ") + (names[strcspn(names, " ")] != 0))
		if (!ptrs[i])
			return msa_ctx_fail(p->mod->ctx, MSA_EINVAL, "%s: %.*s is NULL", fn,
					    (int)strcspn(names, " "), names);
	return MSA_OK;
}

#define NEED(p, fn, names, ...)                                           \
	do {                                                              \
		const void *ptrs_[] = {__VA_ARGS__};                      \
		int rc_ = need(p, fn, MSA_COUNT(ptrs_), ptrs_, names);   \
		if (rc_)                                                  \
			return rc_;                                       \
	} while (0)

static int run_index(msa_plan *p, msa_kernel *k, const void *qi, const void *ki, int32_t *ids,
		     float *scores, void *stream)
{
	const msa_layer *l = &p->mod->layer;
	CUdeviceptr pt = p->pages;
	int stride = p->pages_per_req, nbs = p->nb_max, rc;
	int ks = scores || p->split_topk ? p->ksplit : 1;
	if (p->max_q == 0)
		return MSA_OK;
	if (p->index90) {
		CUtensorMap mq, mk;
		const int es = (int)msa_dtype_size(l->dtype_index), qpc = index90_qpc(k, l);
		const int box3[3] = {128 / es, l->heads_kv, qpc}, box2[2] = {128 / es, 128};
		const long dq[3] = {l->index_dim, l->heads_kv, p->total_q}, rq[2] = {(long)l->index_dim * es,
										     (long)l->index_dim * es * l->heads_kv};
		const long dk[2] = {l->index_dim, p->ki_rows}, rk[1] = {(long)l->index_dim * es};
		void *args[] = {&mq, &mk, &p->cu_q, &p->cu_kv, &pt, &stride, &p->idx_scale, &ids, &scores, &nbs, &ks,
				&p->split_ws};
		if ((rc = msa_tmap(p->mod->ctx, &mq, qi, l->dtype_index, 3, dq, rq, box3, "qi")) ||
		    (rc = msa_tmap(p->mod->ctx, &mk, ki, l->dtype_index, 2, dk, rk, box2, "ki")))
			return rc;
		return msa_launch(p->mod->ctx, k, (unsigned)((p->max_q + qpc - 1) / qpc * ks), 1, (unsigned)p->batch,
				  args, stream);
	}
	void *args[] = {&qi, &ki, &p->cu_q, &p->cu_kv, &pt, &stride, &p->idx_scale, &ids, &scores, &nbs, &ks};
	return msa_launch(p->mod->ctx, k, (unsigned)((p->max_q + 63) / 64 * ks), (unsigned)l->heads_kv,
			  (unsigned)p->batch, args, stream);
}

int msa_index_scores(msa_plan *p, const void *qi, const void *ki, float *scores, void *stream)
{
	NEED(p, "msa_index_scores", "qi ki scores", qi, ki, scores);
	return run_index(p, p->k_scores, qi, ki, NULL, scores, stream);
}

int msa_index_topk(msa_plan *p, const void *qi, const void *ki, int32_t *ids, void *stream)
{
	NEED(p, "msa_index_topk", "qi ki ids", qi, ki, ids);
	return run_index(p, p->k_itopk, qi, ki, ids, NULL, stream);
}

int msa_topk(msa_plan *p, const float *scores, int32_t *ids, void *stream)
{
	NEED(p, "msa_topk", "scores ids", scores, ids);
	int nbs = p->nb_max, rows = p->mod->layer.heads_kv * p->total_q;
	void *args[] = {&scores, &nbs, &p->cu_q, &p->cu_kv, &p->batch, &p->total_q, &ids};
	if (rows == 0)
		return MSA_OK;
	if (p->topk_ctas)
		return msa_launch_cluster(p->mod->ctx, p->k_topk->fn2, "msa_topk_rows",
					  (unsigned)(rows * p->topk_ctas), (unsigned)p->topk_ctas,
					  (unsigned)p->k_topk->threads, args, stream);
	return msa_launch(p->mod->ctx, p->k_topk, (unsigned)((rows + 3) / 4), 1, 1, args, stream);
}

/* Every KV-outer pass's lists at once: count, scan (a CTA per pass), fill.
 * Every step is a launch or an async memset. */
static int kvo_gather(msa_plan *p, const int32_t *ids, void *stream)
{
	const msa_layer *l = &p->mod->layer;
	msa_ctx *ctx = p->mod->ctx;
	CUstream s = (CUstream)stream;
	int nkeys = l->heads_kv * p->nbt, pass = 0;	/* msa_gather: 0 counts, 1 fills */
	long list_stride = (long)p->chunk * l->heads_kv * l->topk;
	size_t ncount = (size_t)p->npass * nkeys;
	long nsel = (long)p->total_q * l->heads_kv * l->topk;
	unsigned gblocks = (unsigned)((nsel + 255) / 256);
	void *g[] = {&ids, &p->cu_q, &p->cu_kv, &p->blk_off, &p->batch, &p->total_q, &p->nbt, &pass,
		     &p->cursor, &p->start, &p->list, &p->chunk, &nkeys};
	void *sc[] = {&p->cursor, &nkeys, &p->start, &p->tiles, &p->max_tiles, &p->ntiles, &list_stride};
	int rc;
	if ((rc = msa_cu_check(p->mod->cu->MemsetD32Async(p->cursor, 0, ncount, s), "cuMemsetD32Async",
			       ctx->err, sizeof ctx->err)) ||
	    (rc = msa_launch_fn(ctx, p->k_gather->fn, "msa_gather", gblocks, 1, 1, 256, 0, g, stream)) ||
	    (rc = msa_launch_fn(ctx, p->k_gather->fn2, "msa_gather_scan", (unsigned)p->npass, 1, 1, 1024, 0, sc,
				stream)) ||
	    (rc = msa_cu_check(p->mod->cu->MemsetD32Async(p->cursor, 0, ncount, s), "cuMemsetD32Async",
			       ctx->err, sizeof ctx->err)))
		return rc;
	pass = 1;	/* the launch copies the arguments: the count above keeps pass 0 */
	return msa_launch_fn(ctx, p->k_gather->fn, "msa_gather", gblocks, 1, 1, 256, 0, g, stream);
}

/* KV-outer pass `pass` over queries [t0, t1) (its lists gathered by
 * kvo_gather): partials, combine. */
static int kvo_pass(msa_plan *p, const void *q, const void *k, const void *v, int pass, void *out, float *lse,
		    int t0, int t1, void *stream)
{
	const msa_layer *l = &p->mod->layer;
	const msa_cu *cu = p->mod->cu;
	msa_ctx *ctx = p->mod->ctx;
	CUstream s = (CUstream)stream;
	CUdeviceptr pt = p->pages, part_lse = p->kvo_part + (size_t)p->chunk * l->heads_q * l->topk * l->head_dim *
								      (p->kvo_bf16 ? 2 : 4);
	int nkeys = l->heads_kv * p->nbt, stride = p->pages_per_req, rc;
	int mode = p->kvo_bf16 ? 2 : 1;	/* combine: bf16 or fp32 partial o */
	/* this pass's counters (start, count), tiles and tile count */
	CUdeviceptr start = p->start + (size_t)pass * nkeys * 4, count = p->cursor + (size_t)pass * nkeys * 4,
		    tiles = p->tiles + (size_t)pass * p->max_tiles * 8, ntiles = p->ntiles + (size_t)pass * 4;
	int kvo_tpc = p->kvo_bf16 ? p->k_kvo->tune[0] : 1;	/* tiles per CTA, or per chunk */
	unsigned kvo_grid = (unsigned)((p->max_tiles + kvo_tpc - 1) / kvo_tpc);
	if (p->kvo_bf16 && l->group >= 8 && p->mod->sms > 0 && kvo_grid > (unsigned)p->mod->sms)
		kvo_grid = (unsigned)p->mod->sms;	/* persistent: one CTA per SM walks the chunks */
	int rows = (t1 - t0) * l->heads_q, ksel = l->topk;
	/* sparse_kvo90 takes tensor maps of q (boxes of 64 columns x the
	 * group's G heads x one token), k and v (64 columns x 128 keys of one
	 * head: [token][head][D], or [page x head][block][D] when paged) first */
	CUtensorMap mq, mk, mv, mo;
	void *kv[] = {&mq, &mk, &mv, &mo, &q, &k, &v, &p->cu_q, &p->cu_kv, &p->blk_off, &p->batch, &p->nbt, &pt,
		      &stride, &p->scale_log2, &p->out_scale, &start, &count, &p->list, &tiles,
		      &ntiles, &t0, &p->kvo_part, &part_lse};
	const long qd[3] = {l->head_dim, l->heads_q, p->total_q},
		   qr[2] = {l->head_dim * 2L, l->head_dim * 2L * l->heads_q};
	const int qbox[3] = {64, l->group < 256 ? l->group : 256, 1};
	const long kd[3] = {l->head_dim, p->paged ? l->block : l->heads_kv,
			    p->paged ? p->ki_rows / l->block * l->heads_kv : p->total_kv},
		   kr[2] = {l->head_dim * 2L, l->head_dim * 2L * (p->paged ? l->block : l->heads_kv)};
	const int kbox[3] = {64, p->paged ? 128 : 1, p->paged ? 1 : 128};
	/* and of the partial o, bf16 [chunk x Hq x k rows][D]: boxes of 64
	 * columns x a query's rows in one warpgroup (G, at most 64) */
	const long od[2] = {l->head_dim, (long)p->chunk * l->heads_q * l->topk}, orb[1] = {l->head_dim * 2L};
	const int obox[2] = {64, l->group < 64 ? l->group : 64};
	char *o = (char *)out + (size_t)t0 * l->heads_q * l->head_dim * msa_dtype_size(l->dtype_out);
	float *ls = lse + (size_t)t0 * l->heads_q;
	const void *nomap = NULL;
	void *cb[] = {&p->kvo_part, &part_lse, &ksel, &rows, &mode, &o, &ls, &nomap};

	if ((p->kvo_bf16 && ((rc = msa_tmap(ctx, &mq, q, l->dtype_q, 3, qd, qr, qbox, "q")) ||
			     (rc = msa_tmap(ctx, &mk, k, l->dtype_kv, 3, kd, kr, kbox, "k")) ||
			     (rc = msa_tmap(ctx, &mv, v, l->dtype_kv, 3, kd, kr, kbox, "v")) ||
			     (rc = msa_tmap(ctx, &mo, (void *)p->kvo_part, MSA_DT_BF16, 2, od, orb, obox,
					    "KV-outer partials")))) ||
	    (rc = msa_cu_check(cu->MemsetD32Async(part_lse, 0xff800000u, (size_t)rows * l->topk, s),
			       "cuMemsetD32Async", ctx->err, sizeof ctx->err)) ||
	    (rc = msa_launch(ctx, p->k_kvo, kvo_grid, 1, 1, p->kvo_bf16 ? kv : kv + 4, stream)))
		return rc;
	return msa_launch(ctx, p->k_combine, (unsigned)((rows + 3) / 4), 1, 1, cb, stream);
}

/* msa_sparse_fwd over every query and group (split nsplit ways, then the
 * combine): the selected blocks of ids, or with dense = 1 (causal) or 2
 * every key. */
static int run_query_outer(msa_plan *p, const void *q, const void *k, const void *v, const int32_t *ids,
			   void *out, float *lse, int dense, CUdeviceptr lists, void *stream)
{
	const msa_layer *l = &p->mod->layer;
	CUdeviceptr pt = p->pages;
	int stride = p->pages_per_req, rows = p->total_q * l->heads_q, rc;
	void *args[] = {&q, &k, &v, &ids, &p->cu_q, &p->cu_kv, &p->batch, &pt, &stride, &p->scale_log2,
			&p->out_scale, &p->total_q, &out, &lse, &p->part_o, &p->part_lse, &dense, &lists, &p->ksplit};
	if (p->total_q == 0)
		return MSA_OK;
	rc = msa_launch(p->mod->ctx, p->k_sparse, (unsigned)p->total_q, (unsigned)l->heads_kv,
			(unsigned)p->nsplit, args, stream);
	if (rc || p->nsplit == 1)
		return rc;
	int mode = 3;	/* a CTA per row: every partial's loads in one round */
	const void *nomap = NULL;
	void *cargs[] = {&p->part_o, &p->part_lse, &p->nsplit, &rows, &mode, &out, &lse, &nomap};
	return msa_launch(p->mod->ctx, p->k_combine, (unsigned)rows, 1, 1, cargs, stream);
}

int msa_sparse_attn(msa_plan *p, const void *q, const void *k, const void *v, const int32_t *ids,
		    void *out, float *lse, void *stream)
{
	NEED(p, "msa_sparse_attn", "q k v ids out lse", q, k, v, ids, out, lse);
	if (p->mode == MSA_SPARSE_KVO) {
		int rc = p->total_q > 0 ? kvo_gather(p, ids, stream) : MSA_OK;
		for (int t0 = 0, pass = 0; rc == MSA_OK && t0 < p->total_q; t0 += p->chunk, pass++) {
			int t1 = t0 + p->chunk < p->total_q ? t0 + p->chunk : p->total_q;
			rc = kvo_pass(p, q, k, v, pass, out, lse, t0, t1, stream);
		}
		return rc;
	}
	if (!p->k_sparse)
		return msa_ctx_fail(p->mod->ctx, MSA_EUNSUPPORTED, "layer %s: no sparse kernel",
				    p->mod->layer.name);
	return run_query_outer(p, q, k, v, ids, out, lse, 0, 0, stream);
}

int msa_attention(msa_plan *p, const void *qi, const void *ki, const void *q, const void *k,
		  const void *v, void *out, float *lse, void *stream)
{
	NEED(p, "msa_attention", "qi ki q k v out lse", qi, ki, q, k, v, out, lse);
	int32_t *ids = (int32_t *)(uintptr_t)p->ids;
	float *scores = (float *)(uintptr_t)p->scores_ws;
	int rc;
	if (p->unfused) {	/* decode: scores split over CTAs, then top-k */
		rc = run_index(p, p->k_scores, qi, ki, NULL, scores, stream);
		if (rc == MSA_OK)
			rc = msa_topk(p, scores, ids, stream);
	} else if (p->attn_merge) {	/* decode: the splits' lists, merged by sparse_fwd */
		rc = run_index(p, p->k_itopk, qi, ki, NULL, NULL, stream);
		return rc ? rc : run_query_outer(p, q, k, v, ids, out, lse, 0, p->split_ws, stream);
	} else {
		rc = run_index(p, p->k_itopk, qi, ki, ids, NULL, stream);
	}
	return rc ? rc : msa_sparse_attn(p, q, k, v, ids, out, lse, stream);
}

int msa_dense(msa_plan *p, const void *q, const void *k, const void *v, void *out, float *lse,
	      void *stream)
{
	NEED(p, "msa_dense", "q k v out lse", q, k, v, out, lse);
	if (p->dense_qo)
		return run_query_outer(p, q, k, v, NULL, out, lse, p->mod->layer.causal ? 1 : 2, 0, stream);
	if (!p->k_dense)
		return msa_ctx_fail(p->mod->ctx, MSA_EUNSUPPORTED, "layer %s: no dense kernel",
				    p->mod->layer.name);
	msa_dense_args a = {
		p->mod, p->k_dense, p->dense_wgmma, q, k, v, out, lse, p->cu_q, p->cu_kv, p->pages,
		p->pages_per_req, p->scale_log2, p->out_scale, p->mod->layer.causal, p->batch, p->max_q,
		p->total_q, p->total_kv, p->dense_ctr, 0, NULL,	/* no split tail */
	};
	return msa_dense_launch(&a, stream);
}

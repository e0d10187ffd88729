/* t_msa_gpu.c - every MSA stage on the GPU against the float64 reference:
 * index scores, standalone and fused top-k, sparse attention (split and
 * not), the whole layer, and dense, over contiguous and shuffled paged KV,
 * bf16/fp16/fp8, random G, D, Di, Bk, k and ragged lengths.  Skips without
 * a GPU. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tap.h"

typedef struct mcase {
	int g, hkv, d, di, bk, k, local, sink, dt, paged, nsplit;
	int batch, max_q, max_extra;	/* q_len 1..max_q, kv_len = q_len + 0..max_extra */
	size_t kvo_workspace;
	int consumers;	/* index_topk90's consumer warpgroups; 0: the default */
	int noncausal;	/* 1: causal = false (the dense stage sees every key) */
	double iamp;	/* index q, k amplitude (0: 1); 96 takes fp8 scores past f16's range */
	int min_extra;	/* kv_len = q_len + min_extra..max_extra */
} mcase;

static const char *const dts[] = {"bf16", "fp16", "fp8_e4m3"};

static void tap_row(void *arg, const chk_row *r)
{
	(void)arg;
	ok(r->pass, "%-13s %s: err %.2e (tol %.0e) %s", r->stage, r->shape, r->err, r->tol, r->note);
}

static void run_case(gpu_env *env, const mcase *c, ref_rng *rng, int idx)
{
	char spec[700], tune[96] = "";
	msa_spec *s = NULL;
	chk_case cc = {c->batch, c->max_q, c->max_extra, c->paged, c->nsplit, 0, c->kvo_workspace, c->iamp,
		       c->min_extra};
	if (c->consumers)
		msa_fmt(tune, sizeof tune, ", tune = { index_topk90 = { consumers = { %d } } }", c->consumers);
	if (c->noncausal)
		msa_fmt(tune + strlen(tune), sizeof tune - strlen(tune), ", causal = false");
	msa_fmt(spec, sizeof spec,
		"layer { name = 'c%d', heads = { q = %d, kv = %d }, head_dim = %d, index_dim = %d,"
		" block = %d, topk = %d, local_blocks = %d, sink_blocks = %d,"
		" dtype = { q = '%s', kv = '%s', index = '%s', out = 'bf16' }%s }",
		idx, c->g * c->hkv, c->hkv, c->d, c->di, c->bk, c->k, c->local, c->sink, dts[c->dt],
		dts[c->dt], dts[c->dt], tune);
	if (msa_spec_load_string("case.lua", spec, strlen(spec), &s, env->err, sizeof env->err))
		bail("%s", env->err);
	diag("case %d: G=%d Hkv=%d D=%d Di=%d Bk=%d k=%d L=%d S=%d %s %s%s, index values to +-%g", idx, c->g,
	     c->hkv, c->d, c->di, c->bk, c->k, c->local, c->sink, dts[c->dt], c->paged ? "paged" : "contiguous",
	     tune, c->iamp > 0 ? c->iamp : 1.0);
	if (chk_run(env, &s->layers[0], &cc, rng, tap_row, NULL) < 0)
		bail("chk_run");
	msa_spec_free(s);
}

/* Plan-time checks of the paged layout. */
static void check_plan_errors(gpu_env *env)
{
	static const char text[] = "layer { name = 'e', heads = { q = 8, kv = 2 }, head_dim = 64, block = 64, topk = 4 }";
	msa_spec *s;
	msa_module *m;
	msa_plan *p = NULL;
	int cq[2] = {0, 3}, ck[2] = {0, 130}, table[4] = {0, 1, 7, 2};
	msa_batch b = {1, cq, ck, table, 4, 5, 0, 0, 0, 0, 0, 0, 0, 0};
	msa_spec_load_string("e.lua", text, sizeof text - 1, &s, env->err, sizeof env->err);
	ok(msa_module_new(env->ctx, &s->layers[0], &m) == MSA_OK, "module for plan checks");
	is_int(msa_plan_new(m, &b, &p), MSA_EINVAL, "page id out of range rejected");
	like(msa_ctx_error(env->ctx), "page_table[0][2] = 7 is outside [0, num_pages = 5)", "message names the page");
	b.pages_per_req = 2;
	is_int(msa_plan_new(m, &b, &p), MSA_EINVAL, "too few pages per request rejected");
	like(msa_ctx_error(env->ctx), "kv_len 130 needs 3 pages", "message says how many");
	is_int(msa_plan_new(m, NULL, &p), MSA_EINVAL, "NULL batch rejected");
	b.pages_per_req = 4;
	table[2] = 3;
	b.sparse_mode = 7;
	is_int(msa_plan_new(m, &b, &p), MSA_EINVAL, "bad sparse_mode rejected");
	like(msa_ctx_error(env->ctx), "sparse_mode = 7", "message names the field");
	msa_module_free(m);
	msa_spec_free(s);
}

/* A one-layer spec from text, its module and a contiguous plan over
 * batch requests (cu_q, cu_kv); bails on any error. */
static msa_plan *text_plan(gpu_env *env, const char *text, int batch, int *cq, int *ck, msa_spec **s,
			   msa_module **m)
{
	msa_plan *p;
	msa_batch b = {0};
	msa_spec_load_string("t.lua", text, strlen(text), s, env->err, sizeof env->err);
	if (!*s || msa_module_new(env->ctx, &(*s)->layers[0], m))
		bail("%s", *s ? msa_ctx_error(env->ctx) : env->err);
	b.batch = batch;
	b.cu_q = cq;
	b.cu_kv = ck;
	if (msa_plan_new(*m, &b, &p))
		bail("%s", msa_ctx_error(env->ctx));
	return p;
}

/* Scores with few distinct values: the threshold select ranks ties, and
 * with few levels far more candidates tie than it can hold, so the fallback
 * path runs; both must match the reference exactly.  16 or 64 rows take
 * the few-long-rows path (as in decode: a CTA per row, or from sm_90 on
 * a cluster of up to 8, each CTA a share of at least 1024 scores; the
 * cluster sizes named below are sm_90's), 600 the warp-per-row one; 2
 * levels over 4096 blocks overflow even a CTA's candidate store.  A second,
 * short request gives rows whose shares hold fewer candidates than slots,
 * and k = 40 (more than 32 ranked slots) takes the arg-max passes. */
static void check_topk_ties(gpu_env *env, ref_rng *rng)
{
	static const struct {
		int rows, kv, kv2, k, levels;
		const char *path;
	} cfg[] = {
		{64, 65536, 0, 16, 3, "a CTA per row"},
		{64, 65536, 0, 16, 9, "a CTA per row"},
		{64, 262144, 0, 16, 2, "clusters of 4, overflow fallback"},
		{16, 1048576, 0, 16, 9, "clusters of 8"},
		{16, 524288, 1500, 16, 9, "clusters of 8, short second request"},
		{16, 524288, 0, 40, 9, "clusters of 8, arg-max passes"},
		{600, 65536, 0, 16, 3, "warp per row, fallback"},
		{600, 65536, 0, 16, 9, "warp per row"},
	};
	for (int c = 0; c < MSA_COUNT(cfg); c++) {
		char text[160];
		const int nq = cfg[c].rows, levels = cfg[c].levels, k = cfg[c].k, nb = cfg[c].kv2 ? 2 : 1;
		int cq[3] = {0, nq / nb, nq}, ck[3] = {0, cfg[c].kv, cfg[c].kv + cfg[c].kv2};
		msa_spec *s;
		msa_module *m;
		snprintf(text, sizeof text,
			 "layer { name = 't', heads = { q = 2, kv = 1 }, head_dim = 64, block = 64, topk = %d }", k);
		msa_plan *p = text_plan(env, text, nb, cq, ck, &s, &m);
		ref_batch rb = {nb, cq, ck};
		const size_t ns = (size_t)nq * msa_plan_nb_max(p);
		double *rs = malloc(sizeof(double) * ns);
		float *fs = malloc(sizeof(float) * ns);
		int32_t *gids = malloc(sizeof(int32_t) * nq * k);
		gpu_tensor sc, ids;
		char msg[256] = "";
		for (size_t i = 0; i < ns; i++)
			rs[i] = fs[i] = (float)(floor((ref_uniform(rng) + 1) / 2 * levels) / levels);
		gpu_alloc(env, &sc, REF_F32, ns);
		gpu_poison(env, &ids, REF_F32, (size_t)nq * k);
		env->cu->MemcpyHtoD(sc.dev, fs, ns * 4);
		int rc = msa_topk(p, (float *)sc.dev, (int32_t *)ids.dev, NULL);
		if (!rc)
			rc = gpu_sync(env);
		if (!rc)
			gpu_fetch_raw(env, &ids, gids, (size_t)nq * k * 4);
		ok(!rc && ref_topk_check(gids, rs, &rb, 1, 64, k, 1, 0, msg, sizeof msg),
		   "top-%d of %d rows x %d blocks over %d score levels (%s) matches exactly %s", k, nq,
		   msa_plan_nb_max(p), levels, cfg[c].path, msg);
		gpu_free(env, &sc);
		gpu_free(env, &ids);
		free(rs);
		free(fs);
		free(gids);
		msa_plan_free(p);
		msa_module_free(m);
		msa_spec_free(s);
	}
}

/* The wgmma index kernel's split top-k (decode: each CTA keeps the top of
 * its share of blocks, the last CTA of a tile merges the lists), on block
 * scores with few distinct values: every key of a block is one of `levels`
 * vectors and every value is -1, 0 or 1, so equal levels give exactly
 * equal scores, and the merged ids must follow the tie rule (lower block
 * first) exactly.  Ragged contexts leave shares shorter than the list. */
static void check_index_ties(gpu_env *env, ref_rng *rng)
{
	static const struct {
		int hi, k, sink, local, levels, batch, kv[3], split;
	} cfg[] = {
		{2, 16, 0, 1, 3, 3, {200000, 70001, 1500}, 1},
		{4, 16, 2, 1, 5, 1, {1000003}, 1},
		{8, 8, 0, 0, 2, 2, {40000, 9000}, 1},
		{4, 16, 0, 1, 1, 2, {300001, 128}, 1},
		{2, 17, 0, 0, 4, 1, {500000}, 0},	/* KP 17: scores + msa_topk instead */
	};
	enum { DI = 64, BK = 128 };
	for (int c = 0; c < MSA_COUNT(cfg); c++) {
		const int hi = cfg[c].hi, k = cfg[c].k, nbq = cfg[c].batch, levels = cfg[c].levels;
		int cq[4] = {0}, ck[4] = {0};
		for (int r = 0; r < nbq; r++) {
			cq[r + 1] = r + 1;
			ck[r + 1] = ck[r] + cfg[c].kv[r];
		}
		char text[240];
		snprintf(text, sizeof text,
			 "layer { name = 'it', heads = { q = %d, kv = %d }, head_dim = 64, index_dim = %d, block = %d,"
			 " topk = %d, sink_blocks = %d, local_blocks = %d }", 2 * hi, hi, DI, BK, k, cfg[c].sink,
			 cfg[c].local);
		msa_spec *s;
		msa_module *m;
		msa_plan *p = text_plan(env, text, nbq, cq, ck, &s, &m);
		const int tq = nbq, tkv = ck[nbq], nbm = msa_plan_nb_max(p);
		double *lv = malloc(sizeof(double) * levels * DI), *qd = malloc(sizeof(double) * tq * hi * DI);
		double *rs = malloc(sizeof(double) * hi * tq * nbm);
		unsigned short *kraw = malloc((size_t)tkv * DI * 2), *qraw = malloc((size_t)tq * hi * DI * 2);
		int32_t *gids = malloc(sizeof(int32_t) * hi * tq * k);
		char msg[256] = "";
		for (int i = 0; i < levels * DI; i++)
			lv[i] = floor((ref_uniform(rng) + 1) * 1.5) - 1;	/* -1, 0, 1 */
		for (int i = 0; i < tq * hi * DI; i++) {
			qd[i] = floor((ref_uniform(rng) + 1) * 1.5) - 1;
			ref_store(REF_BF16, qraw, (size_t)i, qd[i]);
		}
		for (int r = 0; r < nbq; r++)
			for (int j = 0; j < ck[r + 1] - ck[r]; j++)
				for (int d = 0; d < DI; d++)
					ref_store(REF_BF16, kraw, (size_t)(ck[r] + j) * DI + d,
						  lv[(j / BK * 7 + r) % levels * DI + d]);
		for (int h = 0; h < hi; h++)
			for (int r = 0; r < nbq; r++)
				for (int bl = 0; bl < nbm; bl++) {
					double dot = 0;
					for (int d = 0; d < DI; d++)
						dot += qd[(r * hi + h) * DI + d] * lv[(bl * 7 + r) % levels * DI + d];
					rs[((size_t)h * tq + r) * nbm + bl] = bl * BK < ck[r + 1] - ck[r] ? dot : -INFINITY;
				}
		gpu_tensor qi, ki, ids;
		gpu_alloc(env, &qi, REF_BF16, (size_t)tq * hi * DI);
		gpu_alloc(env, &ki, REF_BF16, (size_t)tkv * DI);
		gpu_poison(env, &ids, REF_F32, (size_t)hi * tq * k);
		env->cu->MemcpyHtoD(qi.dev, qraw, (size_t)tq * hi * DI * 2);
		env->cu->MemcpyHtoD(ki.dev, kraw, (size_t)tkv * DI * 2);
		ref_batch rb = {nbq, cq, ck};
		int good = 1;
		for (int rep = 0; rep < 2 && good; rep++) {	/* twice: the tickets reset */
			int rc = msa_index_topk(p, (void *)qi.dev, (void *)ki.dev, (int32_t *)ids.dev, NULL);
			if (!rc)
				rc = gpu_sync(env);
			if (!rc)
				gpu_fetch_raw(env, &ids, gids, (size_t)hi * tq * k * 4);
			good = !rc && ref_topk_check(gids, rs, &rb, hi, BK, k, cfg[c].local, cfg[c].sink, msg,
						     sizeof msg);
			env->cu->MemsetD8(ids.dev, 0xff, (size_t)hi * tq * k * 4);
		}
		ok(good && p->split_topk == cfg[c].split && p->ksplit > 1,
		   "index split top-%d (Hi %d, %d splits, merged in-kernel: %s, expected %s) over %d levels, "
		   "contexts %d..%d, twice: exact %s", k, hi, p->ksplit, p->split_topk ? "yes" : "no",
		   cfg[c].split ? "yes" : "no", levels, cfg[c].kv[nbq - 1], cfg[c].kv[0], msg);
		/* msa_attention on the same plan: the index kernel leaves the lists
		 * and each sparse_fwd CTA merges its row; split 0 writes the ids the
		 * plan keeps, which must be exactly the same. */
		int agood = p->attn_merge == (cfg[c].split && !msa_env_is("MSAGEN_SPLIT_MERGE", "index"));
		char amsg[256] = "";
		if (agood && p->attn_merge) {
			gpu_tensor q, kk, vv, o, lse;
			const size_t nq = (size_t)tq * 2 * hi * 64, nkv = (size_t)tkv * hi * 64;
			gpu_alloc(env, &q, REF_BF16, nq);
			gpu_alloc(env, &kk, REF_BF16, nkv);
			gpu_alloc(env, &vv, REF_BF16, nkv);
			gpu_alloc(env, &o, REF_F32, nq);
			gpu_alloc(env, &lse, REF_F32, (size_t)tq * 2 * hi);
			env->cu->MemsetD8(q.dev, 0, nq * 2);
			env->cu->MemsetD8(kk.dev, 0, nkv * 2);
			env->cu->MemsetD8(vv.dev, 0, nkv * 2);
			for (int rep = 0; rep < 2 && agood; rep++) {
				env->cu->MemsetD8(p->ids, 0xff, (size_t)hi * tq * k * 4);
				int rc = msa_attention(p, (void *)qi.dev, (void *)ki.dev, (void *)q.dev, (void *)kk.dev,
						       (void *)vv.dev, (void *)o.dev, (float *)lse.dev, NULL);
				if (!rc)
					rc = gpu_sync(env);
				if (!rc && env->cu->MemcpyDtoH(gids, p->ids, (size_t)hi * tq * k * 4) != CUDA_SUCCESS)
					rc = 1;
				agood = !rc && ref_topk_check(gids, rs, &rb, hi, BK, k, cfg[c].local, cfg[c].sink, amsg,
							      sizeof amsg);
			}
			gpu_free(env, &q);
			gpu_free(env, &kk);
			gpu_free(env, &vv);
			gpu_free(env, &o);
			gpu_free(env, &lse);
		}
		ok(agood, "msa_attention on that plan (lists merged by sparse_fwd: %s, expected %s), twice: exact %s",
		   p->attn_merge ? "yes" : "no", cfg[c].split ? "yes" : "no", amsg);
		gpu_free(env, &qi);
		gpu_free(env, &ki);
		gpu_free(env, &ids);
		free(lv);
		free(qd);
		free(rs);
		free(kraw);
		free(qraw);
		free(gids);
		msa_plan_free(p);
		msa_module_free(m);
		msa_spec_free(s);
	}
}

int main(void)
{
	static const mcase cases[] = {
		/* g hkv d  di  bk  k  L S dt pg ns batch maxq extra kvo_ws consumers noncausal iamp min_extra */
		{16, 1, 128, 128, 128, 4, 1, 0, 0, 0, 0, 2, 200, 500, 0, 0, 0, 0, 0},
		{1, 4, 64, 64, 64, 8, 1, 0, 0, 0, 0, 3, 200, 600, 0, 0, 0, 0, 0},
		{2, 2, 128, 64, 64, 16, 1, 2, 1, 0, 0, 2, 150, 900, 0, 0, 0, 0, 0},
		{4, 1, 64, 128, 128, 4, 0, 0, 0, 1, 0, 3, 100, 800, 0, 0, 0, 0, 0},
		{8, 2, 128, 128, 64, 32, 1, 0, 0, 1, 0, 2, 90, 1500, 0, 0, 0, 0, 0},
		{16, 1, 128, 128, 128, 16, 1, 0, 0, 1, 0, 4, 16, 5000, 0, 0, 0, 0, 0},	/* decode, split */
		{8, 4, 128, 128, 128, 16, 1, 0, 0, 1, 0, 1, 1, 65536, 0, 0, 0, 0, 0},	/* decode 64K */
		{4, 2, 64, 64, 64, 8, 1, 1, 1, 1, 4, 3, 12, 2000, 0, 0, 0, 0, 0},	/* fp16, forced splits */
		{16, 1, 128, 128, 128, 8, 1, 0, 2, 0, 0, 2, 150, 500, 0, 0, 0, 0, 0},	/* fp8 */
		{2, 2, 64, 64, 64, 4, 1, 0, 2, 1, 0, 2, 8, 1500, 0, 0, 0, 0, 0},	/* fp8 paged decode */
		{4, 2, 64, 64, 64, 4, 1, 0, 0, 0, 0, 8, 3, 40, 0, 0, 0, 0, 0},	/* contexts of one block */
		{16, 1, 128, 128, 128, 8, 1, 0, 0, 1, 0, 3, 150, 400, 3 << 20, 0, 0, 0, 0},	/* KV-outer in passes */
		{32, 2, 64, 64, 64, 8, 1, 0, 1, 0, 0, 2, 120, 300, 0, 0, 0, 0, 0},	/* G = 32 */
		{8, 2, 128, 128, 128, 16, 1, 2, 0, 1, 0, 2, 150, 2000, 0, 0, 0, 0, 0},	/* wgmma index: sinks, KP 13 */
		{4, 4, 64, 128, 128, 32, 0, 0, 1, 0, 0, 2, 100, 4500, 0, 0, 0, 0, 0},	/* wgmma index: KP 32 */
		{8, 2, 128, 128, 128, 16, 1, 2, 0, 1, 0, 2, 150, 2000, 0, 2, 0, 0, 0},	/* the same, 2 consumers */
		{4, 4, 64, 128, 128, 32, 0, 0, 2, 0, 0, 2, 100, 4500, 0, 2, 0, 0, 0},	/* fp8, KP 32, 2 consumers */
		{16, 1, 128, 128, 128, 16, 1, 0, 0, 1, 0, 3, 8, 3000, 0, 0, 1, 0, 0},	/* decode, causal = false */
		/* fp8 index values to +-96 (+-64): most (a few) block sums pass 65504, so the
		 * wgmma index recomputes those blocks in fp32 (prefill, then split decode) */
		{16, 4, 128, 128, 128, 16, 1, 0, 2, 0, 0, 2, 150, 700, 0, 0, 0, 96, 0},
		{16, 4, 128, 128, 128, 16, 1, 0, 2, 1, 0, 3, 2, 6000, 0, 0, 0, 64, 0},
		/* the warp-specialised KV-outer kernel at head dim 64: 16 (two) queries a tile */
		{8, 2, 64, 64, 128, 8, 1, 0, 0, 1, 0, 2, 150, 700, 0, 0, 0, 0, 0},
		{64, 1, 64, 64, 128, 8, 1, 0, 1, 0, 0, 2, 120, 500, 0, 0, 0, 0, 0},
		/* long decode, several requests of 66K-90K tokens (on sm_90a the
		 * split index leaves lists that sparse_fwd merges): bf16 with 2
		 * queries a request, fp8 with 1 */
		{8, 2, 128, 128, 128, 16, 1, 0, 0, 1, 0, 3, 2, 90000, 0, 0, 0, 0, 66000},
		{16, 4, 128, 128, 128, 16, 1, 1, 2, 1, 0, 4, 1, 80000, 0, 0, 0, 0, 66000},
	};
	gpu_env env;
	ref_rng rng;
	if (gpu_init(&env, NULL) != MSA_OK)
		skip_all("no GPU: %s", env.err);
	diag("compute capability %d, seed %llu (MSAGEN_SEED repeats it)", env.cc, (unsigned long long)env.seed);
	rng = ref_rng_new(env.seed);
	plan(8 + 8 + (env.cc >= 90 ? 10 : 0) + CHK_STAGES * MSA_COUNT(cases));
	check_plan_errors(&env);
	check_topk_ties(&env, &rng);
	if (env.cc >= 90)
		check_index_ties(&env, &rng);
	for (int i = 0; i < MSA_COUNT(cases); i++)
		run_case(&env, &cases[i], &rng, i);
	gpu_done(&env);
	return done_testing();
}

/* t_msa_gpu.c - every MSA stage on the GPU against the float64 reference:
 * index scores, standalone and fused top-k, sparse attention (split and
 * not), the whole layer, and dense, over contiguous and shuffled paged KV,
 * bf16/fp16/fp8, random G, D, Di, Bk, k and ragged lengths.  Skips without
 * a GPU. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "gpu.h"
#include "ref.h"
#include "tap.h"

typedef struct mcase {
	int g, hkv, d, di, bk, k, local, sink, dt, paged, nsplit;
	int batch, max_q, max_extra;	/* q_len 1..max_q, kv_len = q_len + 0..max_extra */
} mcase;

#define CHECKS_PER_CASE 7

static const char *const dts[] = {"bf16", "fp16", "fp8_e4m3"};
static const enum ref_fmt fmts[] = {REF_BF16, REF_F16, REF_E4M3};

typedef struct io {
	gpu_tensor q, k, v, qi, ki;
	double *kd, *vd, *kid;	/* contiguous reference values (dequantised) */
	int32_t *table;
	int num_pages, per;	/* pages in the cache, table columns */
} io;

/* Random contiguous tensors; paged ones are scattered into shuffled pages. */
static void make_kv(gpu_env *env, io *x, const mcase *c, const ref_batch *rb, ref_rng *rng,
		    double sk, double sv, double ski)
{
	int tkv = ref_total_kv(rb), hq = c->g * c->hkv, tq = ref_total_q(rb), per = 0;
	enum ref_fmt f = fmts[c->dt];
	gpu_tensor kc, vc, kic;
	gpu_random(env, &x->q, f, (size_t)tq * hq * c->d, rng, 1.0);
	gpu_random(env, &x->qi, f, (size_t)tq * c->hkv * c->di, rng, 1.0);
	gpu_random(env, &kc, f, (size_t)tkv * c->hkv * c->d, rng, 1.0);
	gpu_random(env, &vc, f, (size_t)tkv * c->hkv * c->d, rng, 1.0);
	gpu_random(env, &kic, f, (size_t)tkv * c->di, rng, 1.0);
	x->kd = malloc(sizeof(double) * kc.n);
	x->vd = malloc(sizeof(double) * vc.n);
	x->kid = malloc(sizeof(double) * (kic.n ? kic.n : 1));
	for (size_t i = 0; i < kc.n; i++) {
		x->kd[i] = kc.host[i] * sk;
		x->vd[i] = vc.host[i] * sv;
	}
	for (size_t i = 0; i < kic.n; i++)
		x->kid[i] = kic.host[i] * ski;
	if (!c->paged) {
		x->k = kc;
		x->v = vc;
		x->ki = kic;
		return;
	}
	for (int r = 0; r < rb->batch; r++) {
		int nb = (ref_kv_len(rb, r) + c->bk - 1) / c->bk;
		per = nb > per ? nb : per;
	}
	per += 1;	/* a spare column: tables may be wider than needed */
	x->num_pages = rb->batch * per + 3;
	x->table = malloc(sizeof(int32_t) * (size_t)rb->batch * per);
	int32_t *perm = malloc(sizeof(int32_t) * (size_t)x->num_pages);
	for (int i = 0; i < x->num_pages; i++)
		perm[i] = i;
	for (int i = x->num_pages - 1; i > 0; i--) {
		int j = ref_randint(rng, 0, i), t = perm[i];
		perm[i] = perm[j];
		perm[j] = t;
	}
	for (int i = 0; i < rb->batch * per; i++)
		x->table[i] = perm[i];
	free(perm);
	size_t es = ref_fmt_size(f), kvrow = (size_t)c->hkv * c->bk * c->d, irow = (size_t)c->bk * c->di;
	void *kp = calloc((size_t)x->num_pages * kvrow, es), *vp = calloc((size_t)x->num_pages * kvrow, es);
	void *ip = calloc((size_t)x->num_pages * irow, es);
	for (int r = 0; r < rb->batch; r++) {
		size_t o = (size_t)rb->cu_kv[r];
		ref_scatter_pages(kp, es, x->num_pages, c->hkv, c->bk, c->d, x->table + r * per,
				  ref_kv_len(rb, r), (char *)kc.raw + o * c->hkv * c->d * es);
		ref_scatter_pages(vp, es, x->num_pages, c->hkv, c->bk, c->d, x->table + r * per,
				  ref_kv_len(rb, r), (char *)vc.raw + o * c->hkv * c->d * es);
		ref_scatter_pages(ip, es, x->num_pages, 1, c->bk, c->di, x->table + r * per,
				  ref_kv_len(rb, r), (char *)kic.raw + o * c->di * es);
	}
	gpu_alloc(env, &x->k, f, (size_t)x->num_pages * kvrow);
	gpu_alloc(env, &x->v, f, (size_t)x->num_pages * kvrow);
	gpu_alloc(env, &x->ki, f, (size_t)x->num_pages * irow);
	env->cu->MemcpyHtoD(x->k.dev, kp, x->k.n * es);
	env->cu->MemcpyHtoD(x->v.dev, vp, x->v.n * es);
	env->cu->MemcpyHtoD(x->ki.dev, ip, x->ki.n * es);
	free(kp);
	free(vp);
	free(ip);
	gpu_free(env, &kc);
	gpu_free(env, &vc);
	gpu_free(env, &kic);
	x->per = per;
}

static int attn_ok(const char *what, const double *ref_o, const double *ref_l, const gpu_tensor *o,
		   const gpu_tensor *l, gpu_env *env, double tol)
{
	double *go = malloc(sizeof(double) * (o->n ? o->n : 1)), *gl = malloc(sizeof(double) * (l->n ? l->n : 1));
	gpu_fetch(env, o, go);
	gpu_fetch(env, l, gl);
	double err = ref_rel_err(ref_o, go, o->n), lerr = 0;
	int lse_ok = 1;
	for (size_t i = 0; i < l->n; i++) {
		if (isinf(ref_l[i]) || isinf(gl[i]))
			lse_ok &= isinf(ref_l[i]) && isinf(gl[i]);
		else if (!(fabs(gl[i] - ref_l[i]) <= lerr))
			lerr = fabs(gl[i] - ref_l[i]);
	}
	int pass = ref_all_finite(go, o->n) && err <= tol && lse_ok && lerr <= 2e-3;
	ok(pass, "%s: rel err %.2e, lse max err %.2e%s", what, err, lerr, lse_ok ? "" : ", -inf mismatch");
	free(go);
	free(gl);
	return pass;
}

static void run_case(gpu_env *env, const mcase *c, ref_rng *rng, int idx)
{
	char spec[600], msg[512];
	int cu_q[9], cu_kv[9], hq = c->g * c->hkv;
	double sq = c->dt == 2 ? 0.75 : 1, sk = c->dt == 2 ? 0.5 : 1, sv = c->dt == 2 ? 1.25 : 1;
	msa_spec *s = NULL;
	msa_module *m = NULL;
	msa_plan *p = NULL;
	io x = {0};

	msa_fmt(spec, sizeof spec,
		"layer { name = 'c%d', heads = { q = %d, kv = %d }, head_dim = %d, index_dim = %d,"
		" block = %d, topk = %d, local_blocks = %d, sink_blocks = %d,"
		" dtype = { q = '%s', kv = '%s', index = '%s', out = 'bf16' } }",
		idx, hq, c->hkv, c->d, c->di, c->bk, c->k, c->local, c->sink, dts[c->dt], dts[c->dt], dts[c->dt]);
	if (msa_spec_load_string("case.lua", spec, strlen(spec), &s, env->err, sizeof env->err))
		bail("%s", env->err);
	cu_q[0] = cu_kv[0] = 0;
	for (int b = 0; b < c->batch; b++) {
		int ql = ref_randint(rng, 1, c->max_q);
		cu_q[b + 1] = cu_q[b] + ql;
		cu_kv[b + 1] = cu_kv[b] + ql + ref_randint(rng, 0, c->max_extra);
	}
	ref_batch rb = {c->batch, cu_q, cu_kv};
	int tq = ref_total_q(&rb);
	make_kv(env, &x, c, &rb, rng, sk, sv, c->dt == 2 ? 0.5 : 1);
	msa_batch mb = {c->batch, cu_q, cu_kv, x.table, x.per, x.num_pages,
			(float)(c->dt == 2 ? sq : 0), (float)(c->dt == 2 ? sk : 0), (float)(c->dt == 2 ? sv : 0),
			(float)(c->dt == 2 ? 2 : 0), (float)(c->dt == 2 ? 0.5 : 0), c->nsplit};
	diag("case %d: G=%d Hkv=%d D=%d Di=%d Bk=%d k=%d L=%d S=%d %s %s batch=%d tq=%d tkv=%d", idx,
	     c->g, c->hkv, c->d, c->di, c->bk, c->k, c->local, c->sink, dts[c->dt],
	     c->paged ? "paged" : "contiguous", c->batch, tq, ref_total_kv(&rb));
	if (msa_module_new(env->ctx, &s->layers[0], &m) || msa_plan_new(m, &mb, &p)) {
		ok(0, "case %d: module and plan: %s", idx, msa_ctx_error(env->ctx));
		skip(CHECKS_PER_CASE - 1, "no plan");
		goto out;
	}
	int nb = msa_plan_nb_max(p), K = c->k;
	double *qd = malloc(sizeof(double) * x.q.n), *qid = malloc(sizeof(double) * x.qi.n);
	for (size_t i = 0; i < x.q.n; i++)
		qd[i] = x.q.host[i] * sq;
	for (size_t i = 0; i < x.qi.n; i++)
		qid[i] = x.qi.host[i] * (c->dt == 2 ? 2 : 1);
	size_t ns = (size_t)c->hkv * tq * nb, nids = (size_t)c->hkv * tq * K;
	double *rs = malloc(sizeof(double) * (ns ? ns : 1)), *gs = malloc(sizeof(double) * (ns ? ns : 1));
	int32_t *rids = malloc(sizeof(int32_t) * nids), *gids = malloc(sizeof(int32_t) * nids);
	gpu_tensor scores, ids, ids2, o, l;
	gpu_poison(env, &scores, REF_F32, ns);
	gpu_poison(env, &ids, REF_F32, nids);
	gpu_poison(env, &ids2, REF_F32, nids);
	gpu_poison(env, &o, REF_BF16, (size_t)tq * hq * c->d);
	gpu_poison(env, &l, REF_F32, (size_t)tq * hq);

	/* 1. index scores */
	ref_index_scores(&rb, qid, x.kid, c->hkv, c->di, c->bk, rs);
	int rc = msa_index_scores(p, (void *)x.qi.dev, (void *)x.ki.dev, (float *)scores.dev, NULL);
	rc = rc ? rc : gpu_sync(env);
	double smax = 0, serr = 0;
	int inf_ok = 1;
	if (!rc) {
		gpu_fetch(env, &scores, gs);
		for (size_t i = 0; i < ns; i++) {
			if (isinf(rs[i]) || isinf(gs[i]) || isnan(gs[i])) {
				inf_ok &= isinf(rs[i]) && isinf(gs[i]) && gs[i] < 0;
				continue;
			}
			smax = fmax(smax, fabs(rs[i]));
			serr = fmax(serr, fabs(rs[i] - gs[i]));
		}
	}
	ok(!rc && inf_ok && serr <= 1e-3 * fmax(smax, 1), "index scores: max err %.2e of %.2e%s %s", serr,
	   smax, inf_ok ? "" : ", -inf mismatch", rc ? msa_ctx_error(env->ctx) : "");

	/* 2. standalone top-k on the reference scores rounded to float */
	float *fs = malloc(sizeof(float) * (ns ? ns : 1));
	for (size_t i = 0; i < ns; i++) {
		fs[i] = (float)rs[i];
		rs[i] = fs[i];
	}
	if (ns)
		env->cu->MemcpyHtoD(scores.dev, fs, ns * 4);
	free(fs);
	rc = msa_topk(p, (float *)scores.dev, (int32_t *)ids.dev, NULL);
	rc = rc ? rc : gpu_sync(env);
	if (!rc)
		gpu_fetch_raw(env, &ids, gids, nids * 4);
	msg[0] = '\0';
	ok(!rc && ref_topk_check(gids, rs, &rb, c->hkv, c->bk, K, c->local, c->sink, msg, sizeof msg),
	   "standalone top-k matches exactly %s%s", msg, rc ? msa_ctx_error(env->ctx) : "");

	/* 3. fused index + top-k, against the float64 scores */
	ref_index_scores(&rb, qid, x.kid, c->hkv, c->di, c->bk, rs);
	rc = msa_index_topk(p, (void *)x.qi.dev, (void *)x.ki.dev, (int32_t *)ids2.dev, NULL);
	rc = rc ? rc : gpu_sync(env);
	if (!rc)
		gpu_fetch_raw(env, &ids2, gids, nids * 4);
	msg[0] = '\0';
	ok(!rc && ref_topk_equivalent(gids, rs, &rb, c->hkv, c->bk, K, c->local, c->sink, 1e-5, 1e-4,
				      msg, sizeof msg),
	   "fused index+top-k %s%s", msg, rc ? msa_ctx_error(env->ctx) : "");

	/* 4. sparse attention over the GPU's selection */
	size_t no = (size_t)tq * hq * c->d;
	double *ro = malloc(sizeof(double) * no), *rl = malloc(sizeof(double) * (size_t)tq * hq);
	ref_sparse(&rb, qd, x.kd, x.vd, gids, hq, c->hkv, c->d, c->bk, K, 1.0 / sqrt(c->d), ro, rl);
	rc = msa_sparse_attn(p, (void *)x.q.dev, (void *)x.k.dev, (void *)x.v.dev, (int32_t *)ids2.dev,
			     (void *)o.dev, (float *)l.dev, NULL);
	rc = rc ? rc : gpu_sync(env);
	msa_fmt(msg, sizeof msg, "sparse attention (nsplit %d)", msa_plan_nsplit(p));
	if (rc)
		ok(0, "%s: %s", msg, msa_ctx_error(env->ctx));
	else
		attn_ok(msg, ro, rl, &o, &l, env, c->dt == 2 ? 3e-2 : 1e-2);

	/* 5. the whole layer */
	env->cu->MemsetD8(o.dev, 0xff, o.n * 2);
	rc = msa_attention(p, (void *)x.qi.dev, (void *)x.ki.dev, (void *)x.q.dev, (void *)x.k.dev,
			   (void *)x.v.dev, (void *)o.dev, (float *)l.dev, NULL);
	rc = rc ? rc : gpu_sync(env);
	if (rc)
		ok(0, "msa_attention: %s", msa_ctx_error(env->ctx));
	else
		attn_ok("msa_attention (index + top-k + sparse)", ro, rl, &o, &l, env, c->dt == 2 ? 3e-2 : 1e-2);

	/* 6. dense over the same KV layout */
	ref_dense(&rb, qd, x.kd, x.vd, hq, c->hkv, c->d, 1, 1.0 / sqrt(c->d), ro, rl);
	env->cu->MemsetD8(o.dev, 0xff, o.n * 2);
	rc = msa_dense(p, (void *)x.q.dev, (void *)x.k.dev, (void *)x.v.dev, (void *)o.dev, (float *)l.dev, NULL);
	rc = rc ? rc : gpu_sync(env);
	if (rc)
		ok(0, "dense: %s", msa_ctx_error(env->ctx));
	else
		attn_ok("dense attention", ro, rl, &o, &l, env, c->dt == 2 ? 3e-2 : 1e-2);

	/* 7. a NULL argument is an error with its name */
	ok(msa_sparse_attn(p, (void *)x.q.dev, NULL, (void *)x.v.dev, (int32_t *)ids2.dev, (void *)o.dev,
			   (float *)l.dev, NULL) == MSA_EINVAL &&
	   strstr(msa_ctx_error(env->ctx), "msa_sparse_attn: k is NULL"), "NULL k rejected by name");
	free(qd);
	free(qid);
	free(rs);
	free(gs);
	free(rids);
	free(gids);
	free(ro);
	free(rl);
	gpu_free(env, &scores);
	gpu_free(env, &ids);
	gpu_free(env, &ids2);
	gpu_free(env, &o);
	gpu_free(env, &l);
out:
	msa_plan_free(p);
	msa_module_free(m);
	msa_spec_free(s);
	gpu_free(env, &x.q);
	gpu_free(env, &x.k);
	gpu_free(env, &x.v);
	gpu_free(env, &x.qi);
	gpu_free(env, &x.ki);
	free(x.kd);
	free(x.vd);
	free(x.kid);
	free(x.table);
}

/* Plan-time checks of the paged layout. */
static void check_plan_errors(gpu_env *env)
{
	static const char text[] = "layer { name = 'e', heads = { q = 8, kv = 2 }, head_dim = 64, block = 64, topk = 4 }";
	msa_spec *s;
	msa_module *m;
	msa_plan *p = NULL;
	int cq[2] = {0, 3}, ck[2] = {0, 130}, table[4] = {0, 1, 7, 2};
	msa_batch b = {1, cq, ck, table, 4, 5, 0, 0, 0, 0, 0, 0};
	msa_spec_load_string("e.lua", text, sizeof text - 1, &s, env->err, sizeof env->err);
	ok(msa_module_new(env->ctx, &s->layers[0], &m) == MSA_OK, "module for plan checks");
	is_int(msa_plan_new(m, &b, &p), MSA_EINVAL, "page id out of range rejected");
	like(msa_ctx_error(env->ctx), "page_table[0][2] = 7 is outside [0, num_pages = 5)", "message names the page");
	b.pages_per_req = 2;
	is_int(msa_plan_new(m, &b, &p), MSA_EINVAL, "too few pages per request rejected");
	like(msa_ctx_error(env->ctx), "kv_len 130 needs 3 pages", "message says how many");
	is_int(msa_plan_new(m, NULL, &p), MSA_EINVAL, "NULL batch rejected");
	msa_module_free(m);
	msa_spec_free(s);
}

int main(void)
{
	static const mcase cases[] = {
		/* g hkv d  di  bk  k  L S dt pg ns batch maxq extra */
		{16, 1, 128, 128, 128, 4, 1, 0, 0, 0, 0, 2, 200, 500},
		{1, 4, 64, 64, 64, 8, 1, 0, 0, 0, 0, 3, 200, 600},
		{2, 2, 128, 64, 64, 16, 1, 2, 1, 0, 0, 2, 150, 900},
		{4, 1, 64, 128, 128, 4, 0, 0, 0, 1, 0, 3, 100, 800},
		{8, 2, 128, 128, 64, 32, 1, 0, 0, 1, 0, 2, 90, 1500},
		{16, 1, 128, 128, 128, 16, 1, 0, 0, 1, 0, 4, 16, 5000},	/* decode, split */
		{8, 4, 128, 128, 128, 16, 1, 0, 0, 1, 0, 1, 1, 65536},	/* decode 64K */
		{4, 2, 64, 64, 64, 8, 1, 1, 1, 1, 4, 3, 12, 2000},	/* fp16, forced splits */
		{16, 1, 128, 128, 128, 8, 1, 0, 2, 0, 0, 2, 150, 500},	/* fp8 */
		{2, 2, 64, 64, 64, 4, 1, 0, 2, 1, 0, 2, 8, 1500},	/* fp8 paged decode */
	};
	gpu_env env;
	ref_rng rng;
	gpu_init_or_skip(&env);
	rng = ref_rng_new(env.seed);
	plan(6 + CHECKS_PER_CASE * MSA_COUNT(cases));
	check_plan_errors(&env);
	for (int i = 0; i < MSA_COUNT(cases); i++)
		run_case(&env, &cases[i], &rng, i);
	gpu_done(&env);
	return done_testing();
}

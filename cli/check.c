/* check.c - one layer, one random shape, every stage on the GPU against the
 * float64 reference (tests/ref.h): index scores, standalone top-k, fused
 * index + top-k, sparse attention, the whole layer, dense.  Inputs are
 * fresh random values, outputs are poisoned before each run. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static const enum ref_fmt fmts[] = {REF_BF16, REF_F16, REF_E4M3};

typedef struct io {
	gpu_tensor q, k, v, qi, ki;
	double *qd, *qid, *kd, *vd, *kid;	/* dequantised reference values */
	int32_t *table;
	int num_pages, per;	/* pages in the cache, table columns */
} io;

/* fp8 gets per-tensor scales that are not 1, so a missed scale fails. */
typedef struct scales {
	double q, k, v, qi, ki;
} scales;

static double *scaled(const gpu_tensor *t, double s)
{
	double *d = malloc(sizeof(double) * (t->n ? t->n : 1));
	if (!d)
		gpu_die("out of host memory");
	for (size_t i = 0; i < t->n; i++)
		d[i] = t->host[i] * s;
	return d;
}

static void make_table(io *x, const ref_batch *rb, int bk, ref_rng *rng)
{
	for (int r = 0; r < rb->batch; r++) {
		int nb = (ref_kv_len(rb, r) + bk - 1) / bk;
		x->per = nb > x->per ? nb : x->per;
	}
	x->per += 1;	/* a spare column: tables may be wider than needed */
	x->num_pages = rb->batch * x->per + 3;
	x->table = malloc(sizeof(int32_t) * (size_t)x->num_pages);
	for (int i = 0; i < x->num_pages; i++)
		x->table[i] = i;
	for (int i = x->num_pages - 1; i > 0; i--) {
		int j = ref_randint(rng, 0, i), t = x->table[i];
		x->table[i] = x->table[j];
		x->table[j] = t;
	}
}

/* Move a contiguous tensor [tkv, H, Dh] into shuffled pages [n, H, Bk, Dh].
 * Slots no request fills (a last page's tail, spare pages) hold NaN (all
 * bits set, in every format), as a cache's unused memory may: a kernel
 * that lets one into a result fails the check. */
static void to_pages(gpu_env *env, gpu_tensor *t, const io *x, const ref_batch *rb, int H, int bk, int dh)
{
	size_t es = ref_fmt_size(t->fmt), page = (size_t)H * bk * dh;
	char *pages = malloc((size_t)x->num_pages * page * es);
	gpu_tensor pt;
	if (!pages)
		gpu_die("out of host memory");
	memset(pages, 0xff, (size_t)x->num_pages * page * es);
	for (int r = 0; r < rb->batch; r++)
		ref_scatter_pages(pages, es, x->num_pages, H, bk, dh, x->table + r * x->per,
				  ref_kv_len(rb, r), (char *)t->raw + (size_t)rb->cu_kv[r] * H * dh * es);
	gpu_alloc(env, &pt, t->fmt, (size_t)x->num_pages * page);
	if (env->cu->MemcpyHtoD(pt.dev, pages, pt.n * es) != CUDA_SUCCESS)
		gpu_die("cuMemcpyHtoD failed");
	free(pages);
	gpu_free(env, t);
	*t = pt;
}

static void make_io(gpu_env *env, io *x, const msa_layer *l, const chk_case *c, const ref_batch *rb,
		    ref_rng *rng, const scales *sc)
{
	int tkv = ref_total_kv(rb), tq = ref_total_q(rb);
	enum ref_fmt f = fmts[l->dtype_q], fi = fmts[l->dtype_index];
	gpu_random(env, &x->q, f, (size_t)tq * l->heads_q * l->head_dim, rng, 1.0);
	const double ia = c->index_amp > 0 ? c->index_amp : 1.0;
	gpu_random(env, &x->qi, fi, (size_t)tq * l->heads_kv * l->index_dim, rng, ia);
	gpu_random(env, &x->k, f, (size_t)tkv * l->heads_kv * l->head_dim, rng, 1.0);
	gpu_random(env, &x->v, f, (size_t)tkv * l->heads_kv * l->head_dim, rng, 1.0);
	gpu_random(env, &x->ki, fi, (size_t)tkv * l->index_dim, rng, ia);
	x->qd = scaled(&x->q, sc->q);
	x->qid = scaled(&x->qi, sc->qi);
	x->kd = scaled(&x->k, sc->k);
	x->vd = scaled(&x->v, sc->v);
	x->kid = scaled(&x->ki, sc->ki);
	if (!c->paged)
		return;
	make_table(x, rb, l->block, rng);
	to_pages(env, &x->k, x, rb, l->heads_kv, l->block, l->head_dim);
	to_pages(env, &x->v, x, rb, l->heads_kv, l->block, l->head_dim);
	to_pages(env, &x->ki, x, rb, 1, l->block, l->index_dim);
}

static void free_io(gpu_env *env, io *x)
{
	gpu_free(env, &x->q);
	gpu_free(env, &x->k);
	gpu_free(env, &x->v);
	gpu_free(env, &x->qi);
	gpu_free(env, &x->ki);
	free(x->qd);
	free(x->qid);
	free(x->kd);
	free(x->vd);
	free(x->kid);
	free(x->table);
}

typedef struct run {
	gpu_env *env;
	const msa_layer *l;
	msa_plan *p;
	msa_module *m;
	msa_batch mb;
	io x;
	ref_batch rb;
	int tq, nb;
	chk_row row;
	chk_fn fn;
	void *arg;
	int failed;
} run;

static void emit(run *u, const char *stage, int pass, double err, double tol)
{
	u->row.stage = stage;
	u->row.pass = pass;
	u->row.err = err;
	u->row.tol = tol;
	u->failed += !pass;
	u->fn(u->arg, &u->row);
	u->row.note[0] = '\0';
}

/* A launch error or a failed sync becomes the row's note. */
static int launched(run *u, int rc)
{
	if (rc == MSA_OK)
		rc = msa_cu_check(u->env->cu->CtxSynchronize(), "cuCtxSynchronize", u->env->ctx->err,
				  sizeof u->env->ctx->err);
	if (rc != MSA_OK)
		msa_fmt(u->row.note, sizeof u->row.note, "%s", msa_ctx_error(u->env->ctx));
	return rc == MSA_OK;
}

/* out/lse against the reference: relative error of out, exact -inf rows. */
static void attn_row(run *u, const char *stage, const gpu_tensor *o, const gpu_tensor *l,
		     const double *ro, const double *rl)
{
	double *go = malloc(sizeof(double) * o->n), *gl = malloc(sizeof(double) * l->n);
	double tol = u->l->dtype_q == MSA_DT_FP8_E4M3 ? 3e-2 : 1e-2, lerr = 0;
	int lse_ok = 1;
	gpu_fetch(u->env, o, go);
	gpu_fetch(u->env, l, gl);
	double err = ref_rel_err(ro, go, o->n);
	for (size_t i = 0; i < l->n; i++) {
		if (isinf(rl[i]) || isinf(gl[i]))
			lse_ok &= isinf(rl[i]) && isinf(gl[i]) && gl[i] < 0;
		else if (!(fabs(gl[i] - rl[i]) <= lerr))
			lerr = fabs(gl[i] - rl[i]);
	}
	if (!lse_ok || lerr > 2e-3)
		msa_fmt(u->row.note, sizeof u->row.note, "lse max err %.2e%s", lerr,
			lse_ok ? "" : ", -inf rows differ");
	emit(u, stage, ref_all_finite(go, o->n) && err <= tol && lse_ok && lerr <= 2e-3, err, tol);
	free(go);
	free(gl);
}

/* Index scores' error bound, relative to the largest score.  16-bit index
 * tensors accumulate in fp32 (~1e-7); fp8 ones on sm_90a in f16 (four
 * roundings of 2^-11 of the partial sums, which measure 6e-4 to 7.5e-4 on
 * uniform inputs), elsewhere in fp32 from fp8 products (2e-4 to 4e-4). */
static double index_tol(const msa_layer *l)
{
	return l->dtype_index == MSA_DT_FP8_E4M3 ? 2e-3 : 1e-3;
}

static void stage_scores(run *u, double *rs, gpu_tensor *scores)
{
	size_t ns = scores->n;
	double *gs = malloc(sizeof(double) * (ns ? ns : 1)), smax = 0, serr = 0;
	int good = 1;
	ref_index_scores(&u->rb, u->x.qid, u->x.kid, u->l->heads_kv, u->l->index_dim, u->l->block, rs);
	if (launched(u, msa_index_scores(u->p, (void *)u->x.qi.dev, (void *)u->x.ki.dev,
					 (float *)scores->dev, NULL))) {
		gpu_fetch(u->env, scores, gs);
		for (size_t i = 0; i < ns; i++) {
			if (isinf(rs[i]) || !isfinite(gs[i])) {
				good &= isinf(rs[i]) && isinf(gs[i]) && gs[i] < 0;
				continue;
			}
			smax = fmax(smax, fabs(rs[i]));
			serr = fmax(serr, fabs(rs[i] - gs[i]));
		}
		if (!good)
			msa_fmt(u->row.note, sizeof u->row.note, "-inf blocks differ");
	} else {
		good = 0;
	}
	serr /= fmax(smax, 1);
	emit(u, "index_scores", good && serr <= index_tol(u->l), serr, index_tol(u->l));
	free(gs);
}

/* Standalone top-k on the reference scores rounded to float: exact. */
static void stage_topk(run *u, double *rs, gpu_tensor *scores, gpu_tensor *ids, int32_t *gids)
{
	const msa_layer *l = u->l;
	size_t ns = scores->n;
	float *fs = malloc(sizeof(float) * (ns ? ns : 1));
	int good;
	for (size_t i = 0; i < ns; i++)
		rs[i] = fs[i] = (float)rs[i];
	if (ns)
		u->env->cu->MemcpyHtoD(scores->dev, fs, ns * 4);
	free(fs);
	good = launched(u, msa_topk(u->p, (float *)scores->dev, (int32_t *)ids->dev, NULL));
	if (good) {
		gpu_fetch_raw(u->env, ids, gids, ids->n * 4);
		good = ref_topk_check(gids, rs, &u->rb, l->heads_kv, l->block, l->topk, l->local_blocks,
				      l->sink_blocks, u->row.note, sizeof u->row.note);
	}
	emit(u, "topk", good, good ? 0 : 1, 0);
}

/* Fused index + top-k against float64 scores: ties within rounding may
 * pick either block.  Rounding is that of the scores: ~1e-7 of the largest
 * for 16-bit index tensors, but fp8 scores accumulate with fewer bits
 * (index_tol), so fp8 picks get index_scores' own bound. */
static void stage_index_topk(run *u, double *rs, gpu_tensor *ids, int32_t *gids)
{
	const msa_layer *l = u->l;
	const double rel = l->dtype_index == MSA_DT_FP8_E4M3 ? index_tol(l) : 1e-5;
	int good;
	ref_index_scores(&u->rb, u->x.qid, u->x.kid, l->heads_kv, l->index_dim, l->block, rs);
	good = launched(u, msa_index_topk(u->p, (void *)u->x.qi.dev, (void *)u->x.ki.dev,
					  (int32_t *)ids->dev, NULL));
	if (good) {
		gpu_fetch_raw(u->env, ids, gids, ids->n * 4);
		good = ref_topk_equivalent(gids, rs, &u->rb, l->heads_kv, l->block, l->topk,
					   l->local_blocks, l->sink_blocks, rel, 1e-4, u->row.note,
					   sizeof u->row.note);
	}
	if (good && u->p->split_topk)
		msa_fmt(u->row.note, sizeof u->row.note, "(%d splits, merged in-kernel)", u->p->ksplit);
	emit(u, "index_topk", good, good ? 0 : 1, 0);
}

/* The main branch in one form, through a plan made for that form. */
static void stage_sparse(run *u, int mode, const gpu_tensor *ids, gpu_tensor *o, gpu_tensor *lse,
			 const double *ro, const double *rl)
{
	const char *stage = mode == MSA_SPARSE_KVO ? "sparse_kvo" : "sparse_qo";
	msa_batch mb = u->mb;
	msa_plan *p = NULL;
	mb.sparse_mode = mode;
	u->env->cu->MemsetD8(o->dev, 0xff, o->n * ref_fmt_size(o->fmt));
	if (launched(u, msa_plan_new(u->m, &mb, &p)) &&
	    launched(u, msa_sparse_attn(p, (void *)u->x.q.dev, (void *)u->x.k.dev, (void *)u->x.v.dev,
					(int32_t *)ids->dev, (void *)o->dev, (float *)lse->dev, NULL))) {
		if (mode == MSA_SPARSE_QO && p->nsplit > 1)
			msa_fmt(u->row.note, sizeof u->row.note, "(%d splits)", p->nsplit);
		attn_row(u, stage, o, lse, ro, rl);
	} else {
		emit(u, stage, 0, NAN, 0);
	}
	msa_plan_free(p);
}

static void stage_attention(run *u, const gpu_tensor *ids, const int32_t *gids)
{
	const msa_layer *l = u->l;
	const int hq = l->heads_q, d = l->head_dim;
	size_t no = (size_t)u->tq * hq * d;
	double *ro = malloc(sizeof(double) * no), *rl = malloc(sizeof(double) * (size_t)u->tq * hq);
	const void *q = (void *)u->x.q.dev, *k = (void *)u->x.k.dev, *v = (void *)u->x.v.dev;
	gpu_tensor o, lse;
	gpu_poison(u->env, &o, fmts[l->dtype_out], no);
	gpu_poison(u->env, &lse, REF_F32, (size_t)u->tq * hq);
	ref_sparse(&u->rb, u->x.qd, u->x.kd, u->x.vd, gids, hq, l->heads_kv, d, l->block, l->topk,
		   l->scale, ro, rl);
	stage_sparse(u, MSA_SPARSE_QO, ids, &o, &lse, ro, rl);
	if (msa_layer_supports(l, MSA_K_SPARSE_KVO))
		stage_sparse(u, MSA_SPARSE_KVO, ids, &o, &lse, ro, rl);
	u->env->cu->MemsetD8(o.dev, 0xff, o.n * ref_fmt_size(o.fmt));
	if (launched(u, msa_attention(u->p, (void *)u->x.qi.dev, (void *)u->x.ki.dev, q, k, v,
				      (void *)o.dev, (float *)lse.dev, NULL))) {
		msa_fmt(u->row.note, sizeof u->row.note, "(%s)",
			u->p->mode == MSA_SPARSE_KVO ? "KV-outer" : "query-outer");
		attn_row(u, "msa_attention", &o, &lse, ro, rl);
	} else {
		emit(u, "msa_attention", 0, NAN, 0);
	}
	ref_dense(&u->rb, u->x.qd, u->x.kd, u->x.vd, hq, l->heads_kv, d, l->causal, l->scale, ro, rl);
	u->env->cu->MemsetD8(o.dev, 0xff, o.n * ref_fmt_size(o.fmt));
	if (launched(u, msa_dense(u->p, q, k, v, (void *)o.dev, (float *)lse.dev, NULL)))
		attn_row(u, "dense", &o, &lse, ro, rl);
	else
		emit(u, "dense", 0, NAN, 0);
	gpu_free(u->env, &o);
	gpu_free(u->env, &lse);
	free(ro);
	free(rl);
}

static void random_batch(const chk_case *c, ref_rng *rng, int *cu_q, int *cu_kv)
{
	cu_q[0] = cu_kv[0] = 0;
	for (int b = 0; b < c->batch; b++) {
		int ql = ref_randint(rng, 1, c->max_q);
		cu_q[b + 1] = cu_q[b] + ql;
		cu_kv[b + 1] = cu_kv[b] + ql + ref_randint(rng, c->min_extra <= c->max_extra ? c->min_extra : 0,
							  c->max_extra);
	}
}

int chk_run(gpu_env *env, const msa_layer *l, const chk_case *c, ref_rng *rng, chk_fn fn, void *arg)
{
	int cu_q[9], cu_kv[9], fp8 = l->dtype_q == MSA_DT_FP8_E4M3, fp8i = l->dtype_index == MSA_DT_FP8_E4M3;
	scales sc = {fp8 ? 0.75 : 1, fp8 ? 0.5 : 1, fp8 ? 1.25 : 1, fp8i ? 2 : 1, fp8i ? 0.5 : 1};
	run u = {0};

	if (c->batch < 1 || c->batch > 8)
		gpu_die("chk_run: batch %d out of 1..8", c->batch);
	random_batch(c, rng, cu_q, cu_kv);
	u.env = env;
	u.l = l;
	u.fn = fn;
	u.arg = arg;
	u.rb = (ref_batch){c->batch, cu_q, cu_kv};
	u.tq = ref_total_q(&u.rb);
	make_io(env, &u.x, l, c, &u.rb, rng, &sc);
	msa_fmt(u.row.shape, sizeof u.row.shape, "%s batch %d, q %d, kv %d%s%s", l->name, c->batch,
		u.tq, ref_total_kv(&u.rb), c->paged ? ", paged" : "", c->nsplit > 1 ? ", split" : "");
	u.mb = (msa_batch){c->batch, cu_q, cu_kv, u.x.table, u.x.per, u.x.num_pages,
			   (float)(fp8 ? sc.q : 0), (float)(fp8 ? sc.k : 0), (float)(fp8 ? sc.v : 0),
			   (float)(fp8i ? sc.qi : 0), (float)(fp8i ? sc.ki : 0), c->nsplit, c->mode,
			   c->kvo_workspace};
	if (!launched(&u, msa_module_new(env->ctx, l, &u.m)) || !launched(&u, msa_plan_new(u.m, &u.mb, &u.p))) {
		emit(&u, "plan", 0, NAN, 0);
		goto out;
	}
	u.nb = msa_plan_nb_max(u.p);
	size_t ns = (size_t)l->heads_kv * u.tq * u.nb, nids = (size_t)l->heads_kv * u.tq * l->topk;
	double *rs = malloc(sizeof(double) * (ns ? ns : 1));
	int32_t *gids = malloc(sizeof(int32_t) * nids);
	gpu_tensor scores, ids;
	gpu_poison(env, &scores, REF_F32, ns);
	gpu_poison(env, &ids, REF_F32, nids);
	stage_scores(&u, rs, &scores);
	stage_topk(&u, rs, &scores, &ids, gids);
	env->cu->MemsetD8(ids.dev, 0xff, nids * 4);
	stage_index_topk(&u, rs, &ids, gids);
	if (msa_layer_supports(l, MSA_K_SPARSE_FWD))
		stage_attention(&u, &ids, gids);
	gpu_free(env, &scores);
	gpu_free(env, &ids);
	free(rs);
	free(gids);
out:
	msa_plan_free(u.p);
	msa_module_free(u.m);
	free_io(env, &u.x);
	return u.failed;
}

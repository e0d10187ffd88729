/* t_dense_gpu.c - dense attention on the GPU against the float64 CPU
 * reference, on random ragged shapes (lengths not multiples of the tile),
 * causal and not, bf16 and fp16, head dims 64 and 128, several tile
 * variants.  Skips without a GPU. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "tap.h"
#include "gpu.h"
#include "ref.h"
#include "tap.h"

typedef struct dcase {
	int hq, hkv, d, fp16, causal, bm, bn;	/* bm 0: the plan's own kernel (wgmma on sm_90a) */
	int batch, max_q, max_extra;	/* q_len in 1..max_q, kv_len = q_len + 0..max_extra */
	int sched1;	/* wgmma kernel: 0 the default schedule, else sched + 1 (ping-pong, persistent) */
	int tail;	/* non-causal persistent wgmma kernel: split this many last items (MSAGEN_DENSE_TAIL) */
} dcase;

static int run_case(gpu_env *env, const dcase *c, ref_rng *rng, int idx)
{
	char spec[512], name[64];
	int cu_q[9], cu_kv[9], rc, pass = 0;
	enum ref_fmt fmt = c->fp16 ? REF_F16 : REF_BF16;
	msa_spec *s = NULL;
	msa_module *m = NULL;
	msa_dense_plan *p = NULL;

	msa_fmt(name, sizeof name, "case%d", idx);
	char tune[96] = "";
	if (c->bm)
		msa_fmt(tune, sizeof tune, ", tune = { dense_fwd = { block_m = %d, block_n = %d } }", c->bm, c->bn);
	msa_fmt(spec, sizeof spec,
		"layer { name = '%s', heads = { q = %d, kv = %d }, head_dim = %d, index_dim = 64,"
		" dtype = '%s', causal = %s%s }",
		name, c->hq, c->hkv, c->d, c->fp16 ? "fp16" : "bf16", c->causal ? "true" : "false", tune);
	if (msa_spec_load_string("case.lua", spec, strlen(spec), &s, env->err, sizeof env->err))
		bail("%s", env->err);
	/* the module JITs the default tiles; the case's tiles come from tune */
	cu_q[0] = cu_kv[0] = 0;
	for (int b = 0; b < c->batch; b++) {
		int ql = ref_randint(rng, 1, c->max_q);
		int kl = c->causal ? ql + ref_randint(rng, 0, c->max_extra) : ref_randint(rng, 0, c->max_q + c->max_extra);
		cu_q[b + 1] = cu_q[b] + ql;
		cu_kv[b + 1] = cu_kv[b] + kl;
	}
	ref_batch rb = {c->batch, cu_q, cu_kv};
	size_t nq = (size_t)cu_q[c->batch] * c->hq * c->d, nk = (size_t)cu_kv[c->batch] * c->hkv * c->d;
	size_t nl = (size_t)cu_q[c->batch] * c->hq;
	gpu_tensor q, k, v, o, lse;
	double *ref_o = malloc(sizeof(double) * nq), *ref_l = malloc(sizeof(double) * nl);
	double *got_o = malloc(sizeof(double) * nq), *got_l = malloc(sizeof(double) * nl);

	gpu_random(env, &q, fmt, nq, rng, 1.0);
	gpu_random(env, &k, fmt, nk, rng, 1.0);
	gpu_random(env, &v, fmt, nk, rng, 1.0);
	gpu_poison(env, &o, fmt, nq);
	gpu_poison(env, &lse, REF_F32, nl);
	rc = msa_module_new(env->ctx, &s->layers[0], &m);
	if (rc == MSA_OK) {
		msa_variant var;
		msa_kernel *kern;
		msa_variant_default(&var, MSA_K_DENSE_FWD, &s->layers[0], m->arch, c->causal);
		var.tune[0] = c->bm;
		var.tune[1] = c->bn;
		rc = msa_dense_plan_new(m, c->batch, cu_q, cu_kv, c->causal, &p);
		/* run the case's tile variant through the same plan */
		if (rc == MSA_OK && c->bm && (rc = msa_kernel_get(env->ctx, &var, &kern)) == MSA_OK) {
			p->k = kern;
			p->wgmma = 0;
		}
		if (rc == MSA_OK && p->wgmma && c->sched1) {
			msa_variant_default(&var, MSA_K_DENSE_FWD90, &s->layers[0], m->arch, c->causal);
			var.tune[1] = c->sched1 - 1;
			if ((rc = msa_kernel_get(env->ctx, &var, &kern)) == MSA_OK)
				p->k = kern;
		}
		if (rc == MSA_OK && !c->bm && env->cc == 90)
			ok(p->wgmma == (p->max_q > 64), "%s: the sm_90a plan takes the wgmma kernel iff a request "
			   "has > 64 queries (max %d: %s)", name, p->max_q, p->wgmma ? "wgmma" : "mma");
	}
	char tail[16];
	msa_fmt(tail, sizeof tail, "%d", c->tail);
	if (c->tail)
		setenv("MSAGEN_DENSE_TAIL", tail, 1);
	if (rc == MSA_OK && c->tail && env->cc == 90) {
		int nfull = 0, tsplit = 0, split = !p->wgmma || msa_dense_plan_tail(p, &nfull, &tsplit);
		ok(split, "%s: the wgmma launch splits its last %d items (%d whole, %d parts each%s)", name, c->tail,
		   nfull, tsplit, p->wgmma ? "" : "; mma kernel");
	}
	if (rc == MSA_OK)
		rc = msa_dense_run(p, (void *)q.dev, (void *)k.dev, (void *)v.dev, (void *)o.dev,
				   (float *)lse.dev, NULL);
	unsetenv("MSAGEN_DENSE_TAIL");
	if (rc == MSA_OK)
		rc = gpu_sync(env);
	if (rc != MSA_OK) {
		ok(0, "%s runs: %s", name, msa_ctx_error(env->ctx));
		goto out;
	}
	gpu_fetch(env, &o, got_o);
	gpu_fetch(env, &lse, got_l);
	ref_dense(&rb, q.host, k.host, v.host, c->hq, c->hkv, c->d, c->causal, 1.0 / sqrt(c->d), ref_o, ref_l);
	double err = ref_rel_err(ref_o, got_o, nq), lerr = 0;
	int lse_ok = 1;
	for (size_t i = 0; i < nl; i++) {
		if (isinf(ref_l[i]) || isinf(got_l[i]))
			lse_ok &= isinf(ref_l[i]) && isinf(got_l[i]) && got_l[i] < 0;
		else if (fabs(got_l[i] - ref_l[i]) > lerr)
			lerr = fabs(got_l[i] - ref_l[i]);
	}
	pass = ref_all_finite(got_o, nq) && err <= 1e-2 && lse_ok && lerr <= 1e-3 && !isnan(lerr);
	ok(pass, "%s: %s Hq=%d Hkv=%d D=%d %s %s bm=%d bn=%d sched=%d tail=%d batch=%d tq=%d tkv=%d: rel err %.2e, "
	   "lse err %.2e", name, c->fp16 ? "fp16" : "bf16", c->hq, c->hkv, c->d, c->causal ? "causal" : "full",
	   p && p->wgmma ? "wgmma" : "mma", c->bm, c->bn, p && p->wgmma ? p->k->tune[1] : -1, c->tail, c->batch,
	   cu_q[c->batch], cu_kv[c->batch], err, lerr);
out:
	msa_dense_plan_free(p);
	msa_module_free(m);
	msa_spec_free(s);
	gpu_free(env, &q);
	gpu_free(env, &k);
	gpu_free(env, &v);
	gpu_free(env, &o);
	gpu_free(env, &lse);
	free(ref_o);
	free(ref_l);
	free(got_o);
	free(got_l);
	return pass;
}

/* Argument checks that need a device (plan and run). */
static void check_errors(gpu_env *env)
{
	static const char text[] = "layer { name = 'e', heads = { q = 4, kv = 2 }, head_dim = 64 }";
	msa_spec *s;
	msa_module *m;
	msa_dense_plan *p = NULL;
	int cq[3] = {0, 5, 9}, ck[3] = {0, 4, 12};
	msa_spec_load_string("e.lua", text, sizeof text - 1, &s, env->err, sizeof env->err);
	ok(msa_module_new(env->ctx, &s->layers[0], &m) == MSA_OK, "module for error checks");
	is_int(msa_dense_plan_new(m, 2, cq, ck, 1, &p), MSA_EINVAL, "kv_len < q_len rejected");
	like(msa_ctx_error(env->ctx), "request 0: kv_len 4 < q_len 5", "message names the request");
	is_int(msa_dense_plan_new(m, 2, NULL, ck, 1, &p), MSA_EINVAL, "NULL cu_q rejected");
	ck[1] = 6;
	ok(msa_dense_plan_new(m, 2, cq, ck, 1, &p) == MSA_OK, "good plan");
	is_int(msa_dense_run(p, NULL, (void *)1, (void *)1, (void *)1, (float *)1, NULL), MSA_EINVAL,
	       "NULL q rejected");
	like(msa_ctx_error(env->ctx), "msa_dense_run: q is NULL", "message names the argument");
	msa_dense_plan_free(p);
	msa_module_free(m);
	msa_spec_free(s);
}

int main(void)
{
	static const dcase cases[] = {
		{4, 2, 64, 0, 1, 64, 64, 3, 200, 150, 0, 0},
		{8, 2, 128, 0, 1, 64, 64, 2, 300, 500, 0, 0},
		{16, 1, 128, 0, 1, 128, 64, 2, 257, 100, 0, 0},
		{4, 4, 128, 1, 1, 64, 32, 3, 130, 70, 0, 0},
		{8, 1, 64, 0, 0, 128, 32, 4, 100, 200, 0, 0},
		{16, 4, 128, 1, 0, 64, 64, 2, 190, 190, 0, 0},
		{4, 1, 128, 0, 1, 64, 64, 1, 1, 3000, 0, 0},	/* decode-like: one query, long kv */
		{2, 2, 64, 0, 1, 128, 64, 1, 1000, 3000, 0, 0},	/* one long request */
		/* the plan's kernel: on sm_90a the wgmma one when a request has > 64 queries */
		{8, 2, 128, 0, 1, 0, 0, 3, 400, 300, 0, 0},
		{16, 4, 128, 1, 1, 0, 0, 4, 300, 0, 0, 0},
		{4, 1, 64, 0, 1, 0, 0, 3, 500, 200, 0, 0},
		{8, 8, 64, 1, 0, 0, 0, 3, 300, 300, 0, 0},
		{16, 2, 128, 0, 0, 0, 0, 5, 200, 90, 0, 0},
		{4, 2, 128, 0, 1, 0, 0, 1, 2100, 3000, 0, 0},	/* one long request, kv > q */
		{8, 1, 128, 1, 0, 0, 0, 2, 129, 1, 0, 0},
		/* every wgmma schedule: neither, ping-pong, persistent, both */
		{8, 2, 128, 0, 1, 0, 0, 4, 700, 300, 1, 0},
		{8, 2, 128, 1, 0, 0, 0, 3, 500, 200, 2, 0},
		{16, 4, 64, 0, 1, 0, 0, 5, 900, 100, 3, 0},
		{4, 1, 128, 0, 0, 0, 0, 2, 1500, 50, 3, 0},
		{8, 2, 128, 0, 1, 0, 0, 6, 600, 300, 4, 0},
		{16, 4, 128, 0, 0, 0, 0, 3, 800, 600, 4, 0},
		/* non-causal split tail: the last items split over key ranges, then
		 * merged (some parts see no key; of the last 40 items some have no rows) */
		{8, 2, 128, 0, 0, 0, 0, 3, 700, 400, 4, 5},
		{16, 4, 64, 1, 0, 0, 0, 2, 500, 300, 3, 2},
		{4, 1, 128, 0, 0, 0, 0, 4, 300, 2000, 4, 40},
		{8, 1, 128, 0, 0, 0, 0, 1, 1000, 3000, 4, 1},
	};
	gpu_env env;
	ref_rng rng;
	if (gpu_init(&env, NULL) != MSA_OK)
		skip_all("no GPU: %s", env.err);
	diag("compute capability %d, seed %llu (MSAGEN_SEED repeats it)", env.cc, (unsigned long long)env.seed);
	rng = ref_rng_new(env.seed);
	int nw = 0;
	for (int i = 0; i < MSA_COUNT(cases); i++)
		nw += (!cases[i].bm && env.cc == 90) + (cases[i].tail && env.cc == 90);
	plan(7 + MSA_COUNT(cases) + nw);
	check_errors(&env);
	for (int i = 0; i < MSA_COUNT(cases); i++)
		run_case(&env, &cases[i], &rng, i);
	gpu_done(&env);
	return done_testing();
}

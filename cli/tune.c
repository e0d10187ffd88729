/* tune.c - `msagen tune`: time every candidate of a layer's tuning space on
 * the GPU for a few shapes and record the winners in the tuning database,
 * which plans then consult (runtime/tune.c).  Candidates are compiled on a
 * CPU thread while the GPU times the ones already compiled. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "tune.h"

static const char usage_tune[] =
	"usage: msagen tune SPEC [--tokens 8192,32768,131072] [--batch B] [--budget SECONDS] [--force]\n"
	"                        [--frozen] [--report DIR] [--cache-dir DIR]\n"
	"       msagen tune --export FILE | --import FILE [--cache-dir DIR]\n"
	"\n"
	"For each layer and token count, time every candidate of the spec's tuning\n"
	"space (dense_fwd tiles; the sparse form, query-outer or KV-outer) with CUDA\n"
	"events (warm-up, L2 flushed between runs, median/p20/p80), check the winner\n"
	"against the float64 reference, and record it in <cache-dir>/tune.db.  Plans\n"
	"then use the record of the nearest shape.  Records for this GPU, NVRTC and\n"
	"generator are reused unless --force.  Candidates within 2% of the fastest\n"
	"are tied and the first in the spec's order wins, so runs agree.\n"
	"  --tokens N,.. tokens per request of each shape; records are keyed by it\n"
	"  --batch B    requests per timed shape (default 1)\n"
	"  --budget S   stop timing new candidates after S seconds (default 600)\n"
	"  --frozen     time nothing; report the records and exit 1 if any is missing\n"
	"  --report DIR write tune-report.md and tune-report.png (relative speed of\n"
	"               every candidate, per shape, axis from 0.5x to 1x of the\n"
	"               fastest; the pick in orange)\n"
	"  --export F / --import F   copy records out of / into the database\n";

typedef struct tune_opts {
	const char *spec, *cache_dir, *report, *exp, *imp;
	long tokens[8];
	int ntokens, force, frozen, batch;
	double budget;
} tune_opts;

typedef struct tune_state {
	tune_opts o;
	gpu_env env;
	char db[1100];
	double t0;
	int missing, failed, budget_hit;
	FILE *md;		/* report table, or NULL */
	tune_group groups[64];	/* for the plot */
	int ngroups;
} tune_state;

static int parse_tune(int argc, char **argv, tune_opts *o)
{
	memset(o, 0, sizeof *o);
	o->budget = 600;
	o->batch = 1;
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "-h") || !strcmp(a, "--help"))
			return 1;
		if (!strcmp(a, "--force") || !strcmp(a, "--frozen")) {
			*(a[3] == 'o' ? &o->force : &o->frozen) = 1;
			continue;
		}
		if (a[0] != '-') {
			o->spec = a;
			continue;
		}
		if (!val) {
			fprintf(stderr, "msagen: %s needs a value\n", a);
			return 2;
		}
		i++;
		if (!strcmp(a, "--tokens")) {
			for (const char *p = val; *p && o->ntokens < 8; p += strcspn(p, ","), p += *p == ',')
				if ((o->tokens[o->ntokens++] = atol(p)) <= 0) {
					fprintf(stderr, "msagen: --tokens %s: positive counts, comma separated\n", val);
					return 2;
				}
		} else if (!strcmp(a, "--batch") && (o->batch = atoi(val)) >= 1 && o->batch <= 64) {
		} else if (!strcmp(a, "--budget") && (o->budget = atof(val)) > 0) {
		} else if (!strcmp(a, "--report")) {
			o->report = val;
		} else if (!strcmp(a, "--cache-dir")) {
			o->cache_dir = val;
		} else if (!strcmp(a, "--export")) {
			o->exp = val;
		} else if (!strcmp(a, "--import")) {
			o->imp = val;
		} else {
			fprintf(stderr, "msagen: tune: bad option %s %s\n", a, val);
			return 2;
		}
	}
	if (!o->ntokens) {
		o->tokens[0] = 8192;
		o->tokens[1] = 32768;
		o->tokens[2] = 131072;
		o->ntokens = 3;
	}
	return 0;
}

/* Device buffers of random 16-bit values: a random 16 MiB block repeated
 * (filling gigabytes from the host one value at a time would take longer
 * than the tuning). */
static CUdeviceptr rand_buf(gpu_env *env, size_t n, int fmt, ref_rng *rng)
{
	size_t blk = n < ((size_t)8 << 20) ? n : (size_t)8 << 20, done;
	uint16_t *h = malloc(blk * 2);
	CUdeviceptr d;
	if (!h || env->cu->MemAlloc(&d, n * 2 + 16) != CUDA_SUCCESS)
		gpu_die("out of memory for %zu values", n);
	for (size_t i = 0; i < blk; i++)
		h[i] = fmt ? ref_f2h((float)ref_uniform(rng)) : ref_f2bf((float)ref_uniform(rng));
	for (done = 0; done < n; done += blk)
		env->cu->MemcpyHtoD(d + done * 2, h, (n - done < blk ? n - done : blk) * 2);
	free(h);
	return d;
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Time fn(arg) reps times after one warm-up, flushing L2 before each. */
static void time_it(tune_state *s, void (*fn)(void *), void *arg, int reps, msa_tune_cand *c)
{
	static CUdeviceptr flush;
	double t[16];
	CUevent e0, e1;
	const msa_cu *cu = s->env.cu;
	if (!flush && cu->MemAlloc(&flush, (size_t)128 << 20) != CUDA_SUCCESS)
		gpu_die("no memory for the L2 flush buffer");
	cu->EventCreate(&e0, 0);
	cu->EventCreate(&e1, 0);
	fn(arg);
	for (int r = 0; r < reps; r++) {
		float ms;
		cu->MemsetD8(flush, (unsigned char)r, (size_t)128 << 20);
		cu->EventRecord(e0, NULL);
		fn(arg);
		cu->EventRecord(e1, NULL);
		cu->EventSynchronize(e1);
		cu->EventElapsedTime(&ms, e0, e1);
		t[r] = ms;
	}
	qsort(t, (size_t)reps, sizeof t[0], cmp_d);
	c->med = t[reps / 2];
	c->p20 = t[(int)((reps - 1) * 0.2 + 0.5)];
	c->p80 = t[(int)((reps - 1) * 0.8 + 0.5)];
	cu->EventDestroy(e0);
	cu->EventDestroy(e1);
}

static int over_budget(tune_state *s)
{
	if (msa_now_ms() - s->t0 < s->o.budget * 1e3)
		return 0;
	if (!s->budget_hit)
		fprintf(stderr, "msagen: tune: budget of %.0f s reached; what remains is not timed\n",
			s->o.budget);
	s->budget_hit = 1;
	return 1;
}

static void report_rows(tune_state *s, const msa_layer *l, const char *what, long n,
			const msa_tune_rec *r, const char *how)
{
	tune_group *g = s->ngroups < 64 ? &s->groups[s->ngroups++] : NULL;
	if (g) {
		g->ncand = r->ncand < 16 ? r->ncand : 16;
		g->pick = r->pick;
		for (int c = 0; c < g->ncand; c++)
			g->med[c] = r->cand[c].med;
	}
	for (int c = 0; c < r->ncand; c++) {
		char cand[64] = "";
		for (int i = 0; i < r->ntune; i++)
			msa_fmt(cand + strlen(cand), sizeof cand - strlen(cand), "%s%d", i ? "x" : "", r->cand[c].tune[i]);
		printf("%-16s %-6s %8ld %-10s %9.3f %9.3f %9.3f  %s\n", l->name, what, n, cand, r->cand[c].med,
		       r->cand[c].p20, r->cand[c].p80, c == r->pick ? how : "");
		if (s->md)
			fprintf(s->md, "| %s | %s | %ld | %s | %.3f | %.3f | %.3f | %s |\n", l->name, what, n, cand,
				r->cand[c].med, r->cand[c].p20, r->cand[c].p80, c == r->pick ? how : "");
	}
}

/* An existing record, or under --frozen the lack of one, ends the work for
 * a shape; returns 1 when there is nothing to time. */
static int settled(tune_state *s, const msa_layer *l, const char *what, long n, const char *key, int ntune)
{
	char *val = NULL;
	msa_tune_rec r;
	int have = msa_kvdb_get(s->db, key, &val) == 1 && msa_tune_parse(val, ntune, &r) == MSA_OK;
	free(val);
	if (have && !s->o.force) {
		report_rows(s, l, what, n, &r, "pick (reused)");
		return 1;
	}
	if (s->o.frozen) {
		printf("%-16s %-6s %8ld no record (--frozen: not timed)\n", l->name, what, n);
		s->missing++;
		return 1;
	}
	return over_budget(s);
}

static void record(tune_state *s, const msa_layer *l, const char *what, long n, const char *key,
		   msa_tune_rec *r)
{
	char val[4096], err[512];
	r->pick = msa_tune_pick(r);
	if (r->pick < 0 || msa_tune_format(r, val, sizeof val) != MSA_OK ||
	    msa_kvdb_put(s->db, key, val, err, sizeof err) != MSA_OK) {
		fprintf(stderr, "msagen: tune: cannot record %s: %s\n", key, r->pick < 0 ? "no timing" : err);
		s->failed++;
		return;
	}
	report_rows(s, l, what, n, r, "pick");
}

typedef struct dense_run {
	msa_dense_plan *p;
	CUdeviceptr q, k, v, o, lse;
} dense_run;

static void dense_once(void *arg)
{
	dense_run *d = arg;
	msa_dense_run(d->p, (void *)d->q, (void *)d->k, (void *)d->v, (void *)d->o, (float *)d->lse, NULL);
}

static enum ref_fmt fmts_out(const msa_layer *l)
{
	return l->dtype_out == MSA_DT_FP16 ? REF_F16 : REF_BF16;
}

/* The winner computes what the reference computes, on a small ragged batch. */
static int check_dense(tune_state *s, msa_module *m, const msa_variant *v, ref_rng *rng)
{
	const msa_layer *l = &m->layer;
	int cu_q[3] = {0, 150, 350}, cu_kv[3] = {0, 300, 500};
	ref_batch rb = {2, cu_q, cu_kv};
	enum ref_fmt f = l->dtype_q == MSA_DT_FP16 ? REF_F16 : REF_BF16;
	gpu_tensor q, k, v2, o, lse;
	msa_dense_plan *p = NULL;
	msa_kernel *kern;
	size_t nq = 350 * (size_t)l->heads_q * l->head_dim, nk = 500 * (size_t)l->heads_kv * l->head_dim;
	double *ro = malloc(sizeof(double) * nq), *rl = malloc(sizeof(double) * 350 * l->heads_q);
	double *go = malloc(sizeof(double) * nq), err = INFINITY;
	gpu_random(&s->env, &q, f, nq, rng, 1);
	gpu_random(&s->env, &k, f, nk, rng, 1);
	gpu_random(&s->env, &v2, f, nk, rng, 1);
	gpu_poison(&s->env, &o, fmts_out(l), nq);
	gpu_poison(&s->env, &lse, REF_F32, 350 * (size_t)l->heads_q);
	if (msa_dense_plan_new(m, 2, cu_q, cu_kv, l->causal, &p) == MSA_OK &&
	    msa_kernel_get(s->env.ctx, v, &kern) == MSA_OK) {
		p->k = kern;
		p->wgmma = 0;	/* a portable tile variant, whatever the plan picked */
		if (msa_dense_run(p, (void *)q.dev, (void *)k.dev, (void *)v2.dev, (void *)o.dev,
				  (float *)lse.dev, NULL) == MSA_OK && gpu_sync(&s->env) == MSA_OK) {
			gpu_fetch(&s->env, &o, go);
			ref_dense(&rb, q.host, k.host, v2.host, l->heads_q, l->heads_kv, l->head_dim, l->causal,
				  l->scale, ro, rl);
			err = ref_rel_err(ro, go, nq);
		}
	}
	msa_dense_plan_free(p);
	gpu_free(&s->env, &q);
	gpu_free(&s->env, &k);
	gpu_free(&s->env, &v2);
	gpu_free(&s->env, &o);
	gpu_free(&s->env, &lse);
	free(ro);
	free(rl);
	free(go);
	if (!(err <= 1e-2))
		fprintf(stderr, "msagen: tune: winner fails the reference check (rel err %.2e)\n", err);
	return err <= 1e-2;
}

typedef struct compile_job {
	msa_ctx *ctx;
	msa_variant *vs;
	int n;
} compile_job;

/* Compile ahead on a CPU thread; the timing loop finds them in the cache. */
static void *compile_ahead(void *arg)
{
	compile_job *j = arg;
	for (int i = 0; i < j->n; i++) {
		msa_cubin cb;
		char err[256];
		if (msa_obtain_cubin(j->ctx, &j->vs[i], &cb, err, sizeof err) == MSA_OK)
			free(cb.cubin);
	}
	return NULL;
}

/* The candidates: the spec's lists for dense_fwd, else every allowed value;
 * those that cannot launch on this GPU are dropped before compiling. */
static int dense_candidates(msa_module *m, msa_variant *out, int max)
{
	msa_variant *vs;
	int n = 0, nv, smem_max = 0;
	char err[256];
	CUdevice d;
	m->cu->CtxGetDevice(&d);
	m->cu->DeviceGetAttribute(&smem_max, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, d);
	if (msa_variants_for_layer(&m->layer, m->arch, &vs, &nv, err, sizeof err) != MSA_OK)
		return 0;
	int spec_space = 0;
	for (int t = 0; t < m->layer.ntune; t++)
		spec_space |= !strcmp(m->layer.tune[t].kernel, "dense_fwd");
	const msa_family *f = msa_family_get(MSA_K_DENSE_FWD);
	if (spec_space) {
		for (int i = 0; i < nv && n < max; i++)
			if (vs[i].kind == MSA_K_DENSE_FWD)
				out[n++] = vs[i];
	} else {
		for (int a = 0; a < f->tunables[0].nallowed; a++)
			for (int b = 0; b < f->tunables[1].nallowed && n < max; b++) {
				msa_variant_default(&out[n], MSA_K_DENSE_FWD, &m->layer, m->arch, m->layer.causal);
				out[n].tune[0] = f->tunables[0].allowed[a];
				out[n].tune[1] = f->tunables[1].allowed[b];
				n++;
			}
	}
	free(vs);
	int kept = 0;
	for (int i = 0; i < n; i++) {
		int threads, smem;
		msa_variant_launch(&out[i], &threads, &smem);
		if (smem <= smem_max && threads <= 1024)
			out[kept++] = out[i];
	}
	return kept;
}

static void tune_tiles(tune_state *s, msa_module *m, long n, ref_rng *rng)
{
	const msa_layer *l = &m->layer;
	msa_variant vs[32], base;
	msa_tune_rec r = {0};
	char key[700];
	int nv = dense_candidates(m, vs, 32);
	pthread_t th;
	compile_job job = {s->env.ctx, vs, nv};
	int cu[65], started, nb = s->o.batch, pruned = 0;
	dense_run d = {0};

	msa_variant_default(&base, MSA_K_DENSE_FWD, l, m->arch, l->causal);
	msa_tune_key(&base, "tiles", msa_tune_bucket(n), m->gpu, m->sms, key, sizeof key);
	if (nv == 0 || l->dtype_q == MSA_DT_FP8_E4M3 || settled(s, l, "tiles", n, key, 2))
		return;
	started = pthread_create(&th, NULL, compile_ahead, &job) == 0;
	for (int b = 0; b <= nb; b++)
		cu[b] = (int)(b * n);
	size_t nq = (size_t)cu[nb] * l->heads_q * l->head_dim, nk = (size_t)cu[nb] * l->heads_kv * l->head_dim;
	d.q = rand_buf(&s->env, nq, l->dtype_q, rng);
	d.k = rand_buf(&s->env, nk, l->dtype_q, rng);
	d.v = rand_buf(&s->env, nk, l->dtype_q, rng);
	s->env.cu->MemAlloc(&d.o, nq * 2);
	s->env.cu->MemAlloc(&d.lse, (size_t)cu[nb] * l->heads_q * 4);
	if (msa_dense_plan_new(m, nb, cu, cu, l->causal, &d.p) != MSA_OK)
		gpu_die("%s", msa_ctx_error(s->env.ctx));
	r.ntune = 2;
	for (int i = 0; i < nv && !over_budget(s); i++) {
		msa_kernel *k;
		msa_cubin cb;
		char err[512];
		int threads, smem;
		/* the compiler's report prunes what would spill or cannot launch */
		msa_variant_launch(&vs[i], &threads, &smem);
		if (msa_obtain_cubin(s->env.ctx, &vs[i], &cb, err, sizeof err) == MSA_OK) {
			free(cb.cubin);
			if (cb.spill > 0 || (cb.regs > 0 && cb.regs * threads > 65536)) {
				fprintf(stderr, "[%s %ld] candidate %d pruned: %d registers, %d spill bytes\n",
					l->name, n, i, cb.regs, cb.spill);
				pruned++;	/* vs stays as is: the compile thread reads it */
				continue;
			}
		}
		if (msa_kernel_get(s->env.ctx, &vs[i], &k) != MSA_OK) {
			fprintf(stderr, "msagen: tune: %s\n", msa_ctx_error(s->env.ctx));
			continue;
		}
		d.p->k = k;
		d.p->wgmma = 0;	/* the portable tile variants are what is tuned here */
		memcpy(r.cand[r.ncand].tune, vs[i].tune, sizeof vs[i].tune);
		time_it(s, dense_once, &d, n > 65536 ? 3 : 7, &r.cand[r.ncand]);
		fprintf(stderr, "[%s %ld] %s: %.3f ms\n", l->name, n, k->name, r.cand[r.ncand].med);
		r.ncand++;
	}
	if (started)
		pthread_join(th, NULL);
	msa_dense_plan_free(d.p);
	s->env.cu->MemFree(d.q);
	s->env.cu->MemFree(d.k);
	s->env.cu->MemFree(d.v);
	s->env.cu->MemFree(d.o);
	s->env.cu->MemFree(d.lse);
	if (r.ncand > 0 && r.ncand + pruned == nv) {	/* one cut short by the budget is not recorded */
		int pick = msa_tune_pick(&r);
		msa_variant w = vs[0];
		memcpy(w.tune, r.cand[pick].tune, sizeof w.tune);
		if (check_dense(s, m, &w, rng))
			record(s, l, "tiles", n, key, &r);
		else
			s->failed++;
	}
}

typedef struct sparse_run {
	msa_plan *p;
	CUdeviceptr q, k, v, ids, o, lse;
} sparse_run;

static void sparse_once(void *arg)
{
	sparse_run *r = arg;
	msa_sparse_attn(r->p, (void *)r->q, (void *)r->k, (void *)r->v, (int32_t *)r->ids, (void *)r->o,
			(float *)r->lse, NULL);
}

/* The sparse form (1 query-outer, 2 KV-outer) over one selection.  Both
 * forms are checked against the reference by `msagen check` and the GPU
 * tests; a form is a plan option, not a new kernel, so nothing new needs
 * checking here. */
static void tune_form(tune_state *s, msa_module *m, long n, ref_rng *rng)
{
	const msa_layer *l = &m->layer;
	msa_variant base;
	msa_tune_rec r = {0};
	char key[700];
	int cu[65], nb = s->o.batch;
	sparse_run sr = {0};
	CUdeviceptr qi, ki;

	msa_variant_default(&base, MSA_K_SPARSE_FWD, l, m->arch, l->causal);
	msa_tune_key(&base, "form", msa_tune_bucket(n), m->gpu, m->sms, key, sizeof key);
	if (!msa_layer_supports(l, MSA_K_SPARSE_KVO) || l->dtype_q == MSA_DT_FP8_E4M3 ||
	    l->dtype_index == MSA_DT_FP8_E4M3 || settled(s, l, "form", n, key, 1))
		return;
	for (int b = 0; b <= nb; b++)
		cu[b] = (int)(b * n);
	size_t tn = (size_t)cu[nb];
	size_t nq = tn * l->heads_q * l->head_dim, nk = tn * l->heads_kv * l->head_dim;
	sr.q = rand_buf(&s->env, nq, l->dtype_q, rng);
	sr.k = rand_buf(&s->env, nk, l->dtype_q, rng);
	sr.v = rand_buf(&s->env, nk, l->dtype_q, rng);
	qi = rand_buf(&s->env, tn * l->heads_kv * l->index_dim, l->dtype_index, rng);
	ki = rand_buf(&s->env, tn * l->index_dim, l->dtype_index, rng);
	s->env.cu->MemAlloc(&sr.ids, (size_t)l->heads_kv * tn * l->topk * 4);
	s->env.cu->MemAlloc(&sr.o, nq * 2);
	s->env.cu->MemAlloc(&sr.lse, tn * l->heads_q * 4);
	r.ntune = 1;
	for (int form = 1; form <= 2 && !over_budget(s); form++) {
		msa_batch b = {0};
		b.batch = nb;
		b.cu_q = b.cu_kv = cu;
		b.sparse_mode = form;
		if (msa_plan_new(m, &b, &sr.p) != MSA_OK)
			gpu_die("%s", msa_ctx_error(s->env.ctx));
		if (form == 1)
			msa_index_topk(sr.p, (void *)qi, (void *)ki, (int32_t *)sr.ids, NULL);
		r.cand[r.ncand].tune[0] = form;
		time_it(s, sparse_once, &sr, n > 65536 ? 3 : 7, &r.cand[r.ncand]);
		fprintf(stderr, "[%s %ld] sparse %s: %.3f ms\n", l->name, n, form == 1 ? "query-outer" : "KV-outer",
			r.cand[r.ncand].med);
		r.ncand++;
		msa_plan_free(sr.p);
	}
	s->env.cu->MemFree(sr.q);
	s->env.cu->MemFree(sr.k);
	s->env.cu->MemFree(sr.v);
	s->env.cu->MemFree(qi);
	s->env.cu->MemFree(ki);
	s->env.cu->MemFree(sr.ids);
	s->env.cu->MemFree(sr.o);
	s->env.cu->MemFree(sr.lse);
	if (r.ncand == 2)
		record(s, l, "form", n, key, &r);
}

static int copy_records(tune_state *s, const char *to, const char *from, const char *verb)
{
	char err[512];
	int merged = 0;
	if (access(from, F_OK) != 0) {
		fprintf(stderr, "msagen: tune %s: %s does not exist\n", verb, from);
		return !strcmp(verb, "imported");	/* exporting nothing is not an error */
	}
	if (msa_kvdb_merge(to, from, &merged, err, sizeof err) != MSA_OK) {
		fprintf(stderr, "msagen: tune %s: %s\n", verb, err);
		return 1;
	}
	printf("%s %d records (%s -> %s)\n", verb, merged, from, to);
	(void)s;
	return 0;
}

static int tune_spec(tune_state *s)
{
	char err[1024];
	msa_spec *spec;
	ref_rng rng = ref_rng_new(s->env.seed);
	if (msa_spec_load(s->o.spec, &spec, err, sizeof err) != MSA_OK) {
		fprintf(stderr, "msagen: %s\n", err);
		return 1;
	}
	printf("%-16s %-6s %8s %-10s %9s %9s %9s\n", "layer", "what", "tokens", "candidate", "median", "p20", "p80");
	for (int li = 0; li < spec->nlayers; li++) {
		msa_module *m;
		if (msa_module_new(s->env.ctx, &spec->layers[li], &m) != MSA_OK) {
			fprintf(stderr, "msagen: %s\n", msa_ctx_error(s->env.ctx));
			s->failed++;
			continue;
		}
		for (int t = 0; t < s->o.ntokens; t++) {
			tune_tiles(s, m, s->o.tokens[t], &rng);
			tune_form(s, m, s->o.tokens[t], &rng);
		}
		msa_module_free(m);
	}
	msa_spec_free(spec);
	printf("tuned in %.1f s: %d failed, %d missing%s; database %s\n", (msa_now_ms() - s->t0) / 1e3,
	       s->failed, s->missing, s->budget_hit ? ", budget reached" : "", s->db);
	return s->failed || s->missing || s->budget_hit;
}

int cmd_tune(int argc, char **argv)
{
	static tune_state s;
	msa_ctx_opts co = {0};
	char path[1200];
	int rc = parse_tune(argc, argv, &s.o);
	if (rc) {
		fputs(usage_tune, rc == 1 ? stdout : stderr);
		return rc == 1 ? 0 : 2;
	}
	co.cache_dir = s.o.cache_dir;
	s.t0 = msa_now_ms();
	if (s.o.exp || s.o.imp) {
		msa_ctx *ctx;
		msa_ctx_new(&co, &ctx);
		msa_tune_db_path(ctx, s.db, sizeof s.db);
		rc = s.o.imp ? copy_records(&s, s.db, s.o.imp, "imported") : 0;
		if (!rc && s.o.exp)
			rc = copy_records(&s, s.o.exp, s.db, "exported");
		msa_ctx_free(ctx);
		if (rc || !s.o.spec)
			return rc;
	}
	if (!s.o.spec) {
		fputs(usage_tune, stderr);
		return 2;
	}
	if (gpu_init(&s.env, &co) != MSA_OK) {
		fprintf(stderr, "msagen: tune needs a GPU: %s\n", s.env.err);
		return 1;
	}
	msa_tune_db_path(s.env.ctx, s.db, sizeof s.db);
	if (s.o.report) {
		msa_mkdirs(s.o.report);
		msa_fmt(path, sizeof path, "%s/tune-report.md", s.o.report);
		if ((s.md = fopen(path, "w")))
			fprintf(s.md, "| layer | what | tokens | candidate | median ms | p20 | p80 | |\n"
				      "| --- | --- | ---: | --- | ---: | ---: | ---: | --- |\n");
	}
	rc = tune_spec(&s);
	if (s.md) {
		fclose(s.md);
		msa_fmt(path, sizeof path, "%s/tune-report.png", s.o.report);
		if (tune_plot_png(path, s.groups, s.ngroups) != 0)
			fprintf(stderr, "msagen: cannot write %s\n", path);
		else
			printf("report: %s/tune-report.md and tune-report.png\n", s.o.report);
	}
	gpu_done(&s.env);
	return rc;
}

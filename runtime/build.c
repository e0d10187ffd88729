/* build.c - compile every variant of a spec into the disk cache, in
 * parallel, with progress.  Needs NVRTC but no GPU. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

typedef struct build_job {
	msa_ctx *ctx;
	msa_variant *vs;
	int n;
	int next;		/* next variant to take, under lock */
	int done;
	msa_build_stats *st;
	msa_progress_fn progress;
	void *progress_arg;
	pthread_mutex_t lock;
	int first_rc;
} build_job;

static void *build_worker(void *arg)
{
	build_job *j = arg;
	for (;;) {
		char name[256], err[4096], line[4600];
		msa_cubin cb;
		int i, rc;

		pthread_mutex_lock(&j->lock);
		i = j->next < j->n ? j->next++ : -1;
		pthread_mutex_unlock(&j->lock);
		if (i < 0)
			return NULL;
		msa_variant_name(&j->vs[i], name, sizeof name);
		err[0] = '\0';
		rc = msa_obtain_cubin(j->ctx, &j->vs[i], &cb, err, sizeof err);
		if (rc != MSA_OK)
			msa_fmt(line, sizeof line, "FAILED %s: %s", name, err);
		else if (cb.from_disk)
			msa_fmt(line, sizeof line, "cached %s", name);
		else
			msa_fmt(line, sizeof line, "compiled %s in %.0f ms", name, cb.compile_ms);
		free(cb.cubin);
		pthread_mutex_lock(&j->lock);
		j->done++;
		if (rc != MSA_OK) {
			j->st->failed++;
			if (!j->first_rc) {
				j->first_rc = rc;
				msa_fmt(j->ctx->err, sizeof j->ctx->err, "%s: %s", name, err);
			}
		} else if (cb.from_disk) {
			j->st->disk_hits++;
		} else {
			j->st->compiled++;
		}
		if (j->progress)
			j->progress(j->progress_arg, j->done, j->n, line);
		pthread_mutex_unlock(&j->lock);
	}
}

/* All variants of all layers, for one arch or each layer's own. */
static int collect(msa_ctx *ctx, const msa_spec *spec, const char *arch,
		   msa_variant **out, int *n)
{
	msa_variant *all = NULL;
	int count = 0, rc = MSA_OK;

	for (int li = 0; li < spec->nlayers && rc == MSA_OK; li++) {
		const msa_layer *l = &spec->layers[li];
		int na = arch ? 1 : l->narch;
		for (int a = 0; a < na && rc == MSA_OK; a++) {
			msa_variant *vs;
			int nv;
			rc = msa_variants_for_layer(l, arch ? arch : l->arch[a], &vs, &nv,
						    ctx->err, sizeof ctx->err);
			if (rc != MSA_OK)
				break;
			msa_variant *grown = realloc(all, sizeof *all * (size_t)(count + nv + 1));
			if (!grown) {
				free(vs);
				rc = msa_ctx_fail(ctx, MSA_ENOMEM, "out of memory");
				break;
			}
			all = grown;
			memcpy(all + count, vs, sizeof *vs * (size_t)nv);
			count += nv;
			free(vs);
		}
	}
	if (rc != MSA_OK) {
		free(all);
		return rc;
	}
	*out = all;
	*n = count;
	return MSA_OK;
}

int msa_build(msa_ctx *ctx, const msa_spec *spec, const char *arch, int jobs,
	      msa_progress_fn progress, void *progress_arg, msa_build_stats *stats)
{
	build_job j = {0};
	msa_build_stats local = {0};
	pthread_t th[64];
	double t0 = msa_now_ms();
	int rc, started = 0;

	if (!ctx)
		return MSA_EINVAL;
	if (!spec)
		return msa_ctx_fail(ctx, MSA_EINVAL, "msa_build: spec is NULL");
	if (arch && !msa_arch_valid(arch))
		return msa_ctx_fail(ctx, MSA_EINVAL, "unknown arch '%s' (sm_80, sm_86, sm_89, sm_90a)", arch);
	if (!stats)
		stats = &local;
	memset(stats, 0, sizeof *stats);
	if ((rc = collect(ctx, spec, arch, &j.vs, &j.n)) != MSA_OK)
		return rc;
	if (jobs <= 0)
		jobs = (int)sysconf(_SC_NPROCESSORS_ONLN);
	if (jobs > j.n)
		jobs = j.n;
	jobs = jobs < 1 ? 1 : jobs > 64 ? 64 : jobs;
	j.ctx = ctx;
	j.st = stats;
	j.progress = progress;
	j.progress_arg = progress_arg;
	pthread_mutex_init(&j.lock, NULL);
	for (int i = 0; i < jobs; i++)
		started += pthread_create(&th[started], NULL, build_worker, &j) == 0;
	if (started == 0)
		build_worker(&j);
	for (int i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	pthread_mutex_destroy(&j.lock);
	stats->variants = j.n;
	stats->seconds = (msa_now_ms() - t0) / 1e3;
	free(j.vs);
	return j.first_rc;
}

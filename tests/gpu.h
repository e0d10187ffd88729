/* gpu.h - device helpers for the GPU tests: skip without a GPU, random
 * tensors with their exact host values, poisoned outputs, fetch as double. */
#ifndef MSA_TEST_GPU_H
#define MSA_TEST_GPU_H

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "ref.h"

/* Device trouble in a helper ends the program: a test or check cannot go
 * on without its buffers. */
__attribute__((unused, noreturn, format(printf, 1, 2))) static void gpu_die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("msagen: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputs("\n", stderr);
	va_end(ap);
	exit(2);
}

typedef struct gpu_env {
	msa_ctx *ctx;
	const msa_cu *cu;
	char err[4096];
	uint64_t seed;
	int cc;			/* compute capability, e.g. 90 */
} gpu_env;

typedef struct gpu_tensor {
	CUdeviceptr dev;
	void *raw;		/* host copy in the device format */
	double *host;		/* exact values as double */
	size_t n;
	enum ref_fmt fmt;
} gpu_tensor;

/* Fresh inputs every run; MSAGEN_SEED reproduces one.  Returns MSA_OK, or
 * an error with the reason in env->err (no GPU, no driver). */
__attribute__((unused)) static int gpu_init(gpu_env *env, const msa_ctx_opts *opts)
{
	int maj, min, rc;
	const char *s = getenv("MSAGEN_SEED");
	memset(env, 0, sizeof *env);
	if ((rc = msa_cu_get(&env->cu, env->err, sizeof env->err)) != MSA_OK ||
	    (rc = msa_cu_ensure_ctx(opts ? opts->device : 0, &maj, &min, env->err, sizeof env->err)) != MSA_OK)
		return rc;
	if ((rc = msa_ctx_new(opts, &env->ctx)) != MSA_OK) {
		msa_fmt(env->err, sizeof env->err, "cannot create a context");
		return rc;
	}
	env->seed = s && *s ? strtoull(s, NULL, 0) : (uint64_t)time(NULL);
	env->cc = maj * 10 + min;
	return MSA_OK;
}

__attribute__((unused)) static void gpu_done(gpu_env *env)
{
	msa_ctx_free(env->ctx);
}

static void gpu_alloc(gpu_env *env, gpu_tensor *t, enum ref_fmt fmt, size_t n)
{
	memset(t, 0, sizeof *t);
	t->n = n;
	t->fmt = fmt;
	if (env->cu->MemAlloc(&t->dev, (n ? n : 1) * ref_fmt_size(fmt)) != CUDA_SUCCESS)
		gpu_die("cuMemAlloc of %zu elements failed", n);
}

__attribute__((unused)) static void gpu_random(gpu_env *env, gpu_tensor *t, enum ref_fmt fmt,
					       size_t n, ref_rng *rng, double amp)
{
	gpu_alloc(env, t, fmt, n);
	t->raw = malloc((n ? n : 1) * ref_fmt_size(fmt));
	t->host = malloc((n ? n : 1) * sizeof(double));
	if (!t->raw || !t->host)
		gpu_die("out of host memory");
	ref_fill(rng, fmt, t->raw, t->host, n, amp);
	if (n && env->cu->MemcpyHtoD(t->dev, t->raw, n * ref_fmt_size(fmt)) != CUDA_SUCCESS)
		gpu_die("cuMemcpyHtoD failed");
}

/* Upload host data given as int32 (page tables, ids). */
__attribute__((unused)) static void gpu_upload_i32(gpu_env *env, gpu_tensor *t, const int32_t *src, size_t n)
{
	gpu_alloc(env, t, REF_F32, n);
	if (n && env->cu->MemcpyHtoD(t->dev, src, n * 4) != CUDA_SUCCESS)
		gpu_die("cuMemcpyHtoD failed");
}

/* All-ones bytes: NaN in every float format, -1 in int32, so an unwritten
 * element cannot pass. */
__attribute__((unused)) static void gpu_poison(gpu_env *env, gpu_tensor *t, enum ref_fmt fmt, size_t n)
{
	gpu_alloc(env, t, fmt, n);
	env->cu->MemsetD8(t->dev, 0xff, (n ? n : 1) * ref_fmt_size(fmt));
}

__attribute__((unused)) static void gpu_fetch(gpu_env *env, const gpu_tensor *t, double *out)
{
	size_t bytes = t->n * ref_fmt_size(t->fmt);
	void *raw = malloc(bytes ? bytes : 1);
	if (!raw || (bytes && env->cu->MemcpyDtoH(raw, t->dev, bytes) != CUDA_SUCCESS))
		gpu_die("cuMemcpyDtoH failed");
	for (size_t i = 0; i < t->n; i++)
		out[i] = ref_load(t->fmt, raw, i);
	free(raw);
}

__attribute__((unused)) static void gpu_fetch_raw(gpu_env *env, const gpu_tensor *t, void *out, size_t bytes)
{
	if (bytes && env->cu->MemcpyDtoH(out, t->dev, bytes) != CUDA_SUCCESS)
		gpu_die("cuMemcpyDtoH failed");
}

__attribute__((unused)) static int gpu_sync(gpu_env *env)
{
	return msa_cu_check(env->cu->CtxSynchronize(), "cuCtxSynchronize", env->ctx->err,
			    sizeof env->ctx->err);
}

__attribute__((unused)) static void gpu_free(gpu_env *env, gpu_tensor *t)
{
	if (t->dev)
		env->cu->MemFree(t->dev);
	free(t->raw);
	free(t->host);
	memset(t, 0, sizeof *t);
}

#endif

/* jit.c - the context and the path from a variant to a loaded kernel:
 * memory table -> disk cache -> NVRTC, then the driver.  Also `build`,
 * which fills the disk cache for a whole spec without a GPU. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

static void default_cache_dir(char *buf, size_t n)
{
	const char *e;
	if ((e = getenv("MSAGEN_CACHE_DIR")) && *e)
		msa_fmt(buf, n, "%s", e);
	else if ((e = getenv("XDG_CACHE_HOME")) && *e)
		msa_fmt(buf, n, "%s/msagen", e);
	else if ((e = getenv("HOME")) && *e)
		msa_fmt(buf, n, "%s/.cache/msagen", e);
	else
		msa_fmt(buf, n, "/tmp/msagen-cache-%d", (int)getuid());
}

int msa_ctx_new(const msa_ctx_opts *opts, msa_ctx **out)
{
	msa_ctx_opts def = {0};
	msa_ctx *ctx;

	if (!out)
		return MSA_EINVAL;
	*out = NULL;
	if (!opts)
		opts = &def;
	if (opts->arch && !msa_arch_valid(opts->arch))
		return MSA_EINVAL;
	ctx = calloc(1, sizeof *ctx);
	if (!ctx || !(ctx->kernels = msa_memtab_new())) {
		free(ctx);
		return MSA_ENOMEM;
	}
	pthread_mutex_init(&ctx->lock, NULL);
	if (opts->cache_dir)
		msa_fmt(ctx->cache_dir, sizeof ctx->cache_dir, "%s", opts->cache_dir);
	else
		default_cache_dir(ctx->cache_dir, sizeof ctx->cache_dir);
	ctx->disk = !opts->no_disk_cache;
	if (opts->arch)
		msa_fmt(ctx->arch, sizeof ctx->arch, "%s", opts->arch);
	ctx->device = opts->device;
	ctx->verbose = opts->verbose || (getenv("MSAGEN_VERBOSE") && *getenv("MSAGEN_VERBOSE") == '1');
	ctx->no_tuned = getenv("MSAGEN_TUNED") && *getenv("MSAGEN_TUNED") == '0';
	*out = ctx;
	return MSA_OK;
}

static void free_kernel(void *arg, const char *key, void *value)
{
	const msa_cu *cu = arg;
	msa_kernel *k = value;
	(void)key;
	if (cu && k->lib)
		cu->LibraryUnload(k->lib);
	free(k);
}

void msa_ctx_free(msa_ctx *ctx)
{
	const msa_cu *cu = NULL;
	if (!ctx)
		return;
	if (ctx->have_gpu)
		msa_cu_get(&cu, NULL, 0);
	msa_memtab_each(ctx->kernels, free_kernel, (void *)cu);
	msa_memtab_free(ctx->kernels);
	msa_tune_db_free(ctx->tunedb);
	pthread_mutex_destroy(&ctx->lock);
	free(ctx);
}

const char *msa_ctx_error(const msa_ctx *ctx)
{
	return ctx ? ctx->err : "no context (NULL)";
}

const char *msa_ctx_cache_dir(const msa_ctx *ctx)
{
	return ctx ? ctx->cache_dir : NULL;
}

int msa_ctx_fail(msa_ctx *ctx, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(ctx->err, sizeof ctx->err, fmt, ap);
	va_end(ap);
	return rc;
}

int msa_arch_valid(const char *arch)
{
	static const char *const known[] = {"sm_80", "sm_86", "sm_89", "sm_90a"};
	for (int i = 0; i < MSA_COUNT(known); i++)
		if (strcmp(arch, known[i]) == 0)
			return 1;
	return 0;
}

/* "Used 128 registers" and spill counts from ptxas -v output, for meta. */
static void resource_meta(const char *log, int *regs, int *spill)
{
	const char *p;
	*regs = *spill = -1;
	if (log && (p = strstr(log, "Used ")))
		sscanf(p, "Used %d registers", regs);
	if (log && (p = strstr(log, "bytes spill stores"))) {
		while (p > log && p[-1] == ' ')
			p--;
		while (p > log && p[-1] >= '0' && p[-1] <= '9')
			p--;
		sscanf(p, "%d", spill);
	}
}

int msa_obtain_cubin(msa_ctx *ctx, const msa_variant *v, msa_cubin *out, char *err, size_t errlen)
{
	char name[256], why[128], *src = NULL, *key = NULL, *meta = NULL;
	size_t len = 0, key_len = 0;
	msa_disk_entry e = {0};
	msa_compiled c = {0};
	int rc, regs, spill;

	memset(out, 0, sizeof *out);
	msa_variant_name(v, name, sizeof name);
	if ((rc = msa_emit(v, &src, &len, err, errlen)) != MSA_OK)
		return rc;
	rc = MSA_ENOMEM;
	if (!(key = msa_artifact_key(src, len, v->arch, &key_len)))
		goto out;
	out->regs = out->spill = -1;
	if (ctx->disk && msa_disk_get(ctx->cache_dir, key, key_len, &e, why, sizeof why) == 1) {
		const char *r = strstr(e.meta, "regs="), *sp = strstr(e.meta, "spill_bytes=");
		out->cubin = e.blob;
		out->cubin_len = e.blob_len;
		out->from_disk = 1;
		if (r)
			sscanf(r, "regs=%d", &out->regs);
		if (sp)
			sscanf(sp, "spill_bytes=%d", &out->spill);
		e.blob = NULL;
		rc = MSA_OK;
		goto out;
	}
	if ((rc = msa_nvrtc_compile(src, len, name, v->arch, &c, err, errlen)) != MSA_OK)
		goto out;
	resource_meta(c.log, &regs, &spill);
	if (ctx->verbose)
		fprintf(stderr, "msagen: compiled %s in %.0f ms (%d registers, %d spill bytes)%s%s\n",
			name, c.ms, regs, spill, ctx->disk ? "; cache: " : "", ctx->disk ? why : "");
	meta = msa_strdupf("name=%s\narch=%s\nregs=%d\nspill_bytes=%d\ncompile_ms=%.1f\n"
			   "generator=%s\n", name, v->arch, regs, spill, c.ms, MSAGEN_VERSION);
	rc = MSA_ENOMEM;
	if (!meta)
		goto out;
	/* A cache that cannot be written costs speed, not correctness. */
	if (ctx->disk && msa_disk_put(ctx->cache_dir, key, key_len, meta, c.cubin,
				      c.cubin_len, why, sizeof why) != MSA_OK)
		fprintf(stderr, "msagen: warning: %s\n", why);
	out->cubin = c.cubin;
	out->cubin_len = c.cubin_len;
	out->compile_ms = c.ms;
	out->regs = regs;
	out->spill = spill;
	c.cubin = NULL;
	rc = MSA_OK;
out:
	msa_compiled_clear(&c);
	msa_disk_entry_clear(&e);
	free(meta);
	free(key);
	free(src);
	return rc;
}

/* The arch to build for on this context: the forced one, else the GPU's. */
int msa_ctx_arch(msa_ctx *ctx, char *arch, size_t n)
{
	int maj = 0, min = 0, rc;
	char err[256];
	if ((rc = msa_cu_ensure_ctx(ctx->device, &maj, &min, err, sizeof err)) != MSA_OK)
		return msa_ctx_fail(ctx, rc, "%s", err);
	ctx->have_gpu = 1;
	if (ctx->arch[0]) {
		msa_fmt(arch, n, "%s", ctx->arch);
		return MSA_OK;
	}
	if (maj == 9 && min == 0)
		msa_fmt(arch, n, "sm_90a");
	else if (maj == 8 && (min == 0 || min == 6 || min == 9))
		msa_fmt(arch, n, "sm_8%d", min);
	else
		return msa_ctx_fail(ctx, MSA_EUNSUPPORTED,
				    "GPU compute capability %d.%d has no msagen target "
				    "(sm_80, sm_86, sm_89, sm_90a)", maj, min);
	return MSA_OK;
}

static int load_kernel(msa_ctx *ctx, const msa_variant *v, const msa_cubin *cb, msa_kernel **out)
{
	const msa_cu *cu = NULL;
	const msa_family *f = msa_family_get(v->kind);
	msa_kernel *k = calloc(1, sizeof *k);
	CUkernel kern;
	int rc;

	if (!k)
		return msa_ctx_fail(ctx, MSA_ENOMEM, "out of memory");
	msa_variant_name(v, k->name, sizeof k->name);
	msa_variant_launch(v, &k->threads, &k->smem);
	memcpy(k->tune, v->tune, sizeof k->tune);
	if ((rc = msa_cu_get(&cu, ctx->err, sizeof ctx->err)) != MSA_OK)
		goto fail;
	rc = msa_cu_check(cu->LibraryLoadData(&k->lib, cb->cubin, NULL, NULL, 0, NULL, NULL, 0),
			  "cuLibraryLoadData", ctx->err, sizeof ctx->err);
	if (rc == MSA_OK)
		rc = msa_cu_check(cu->LibraryGetKernel(&kern, k->lib, f->entry), "cuLibraryGetKernel",
				  ctx->err, sizeof ctx->err);
	if (rc == MSA_OK)
		rc = msa_cu_check(cu->KernelGetFunction(&k->fn, kern), "cuKernelGetFunction",
				  ctx->err, sizeof ctx->err);
	if (rc == MSA_OK && f->entry2) {
		rc = msa_cu_check(cu->LibraryGetKernel(&kern, k->lib, f->entry2), "cuLibraryGetKernel",
				  ctx->err, sizeof ctx->err);
		if (rc == MSA_OK)
			rc = msa_cu_check(cu->KernelGetFunction(&k->fn2, kern), "cuKernelGetFunction",
					  ctx->err, sizeof ctx->err);
	}
	if (rc == MSA_OK && k->smem > 48 * 1024)
		rc = msa_cu_check(cu->FuncSetAttribute(k->fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
						       k->smem), "cuFuncSetAttribute(max dynamic smem)",
				  ctx->err, sizeof ctx->err);
	if (rc != MSA_OK)
		goto fail;
	*out = k;
	return MSA_OK;
fail:
	if (cu && k->lib)
		cu->LibraryUnload(k->lib);
	free(k);
	return rc;
}

int msa_kernel_get(msa_ctx *ctx, const msa_variant *v, msa_kernel **out)
{
	char name[256];
	msa_cubin cb;
	int rc;

	msa_variant_name(v, name, sizeof name);
	pthread_mutex_lock(&ctx->lock);
	if ((*out = msa_memtab_get(ctx->kernels, name))) {
		pthread_mutex_unlock(&ctx->lock);
		return MSA_OK;
	}
	rc = msa_obtain_cubin(ctx, v, &cb, ctx->err, sizeof ctx->err);
	if (rc == MSA_OK)
		rc = load_kernel(ctx, v, &cb, out);
	if (rc == MSA_OK && msa_memtab_put(ctx->kernels, name, *out) != MSA_OK) {
		free_kernel(NULL, name, *out);
		rc = msa_ctx_fail(ctx, MSA_ENOMEM, "out of memory");
	}
	free(cb.cubin);
	pthread_mutex_unlock(&ctx->lock);
	return rc;
}

/* dense.c - modules (a layer's kernels on one device) and the dense
 * attention entry points: plan checks lengths and uploads them once; run
 * only launches. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int msa_module_new(msa_ctx *ctx, const msa_layer *layer, msa_module **out)
{
	msa_module *m;
	int rc;

	if (!ctx || !out)
		return ctx ? msa_ctx_fail(ctx, MSA_EINVAL, "msa_module_new: out is NULL") : MSA_EINVAL;
	*out = NULL;
	if (!layer)
		return msa_ctx_fail(ctx, MSA_EINVAL, "msa_module_new: layer is NULL");
	if (!(m = calloc(1, sizeof *m)))
		return msa_ctx_fail(ctx, MSA_ENOMEM, "out of memory");
	m->ctx = ctx;
	m->layer = *layer;
	if ((rc = msa_ctx_arch(ctx, m->arch, sizeof m->arch)) != MSA_OK)
		goto fail;
	if ((rc = msa_cu_get(&m->cu, ctx->err, sizeof ctx->err)) != MSA_OK)
		goto fail;
	{
		CUdevice d;
		m->cu->CtxGetDevice(&d);
		m->cu->DeviceGetAttribute(&m->sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, d);
		m->cu->DeviceGetName(m->gpu, sizeof m->gpu, d);
	}
	/* JIT at load: every kernel the layer uses, at default tiles. */
	for (int kind = 0; kind < MSA_K_COUNT; kind++) {
		msa_kernel *k;
		if (!msa_layer_supports_on(layer, (msa_kind)kind, m->arch))
			continue;
		if ((rc = msa_module_kernel(m, (msa_kind)kind, layer->causal, &k)) != MSA_OK)
			goto fail;
	}
	*out = m;
	return MSA_OK;
fail:
	free(m);
	return rc;
}

void msa_module_free(msa_module *mod)
{
	free(mod);
}

int msa_module_kernel(msa_module *m, msa_kind kind, int causal, msa_kernel **out)
{
	msa_variant v;
	msa_variant_default(&v, kind, &m->layer, m->arch, causal);
	if (kind == MSA_K_INDEX_TOPK90)
		v.tune[0] = msa_index90_consumers(&m->layer);
	return msa_kernel_get(m->ctx, &v, out);
}

int msa_module_wgmma(const msa_module *m, msa_kind kind, const char *env)
{
	return msa_layer_supports_on(&m->layer, kind, m->arch) && !msa_env_is(env, "mma");
}

/* The dense kernel for a plan: on sm_90a the wgmma kernel, unless
 * MSAGEN_DENSE=mma asks for the portable one (for comparisons) or the plan
 * reads a paged cache or holds at most 64 queries per request; else the
 * portable kernel at tuned or default tiles. */
int msa_module_dense_kernel(msa_module *m, int causal, long max_q, int paged, msa_kernel **out,
			    int *wgmma)
{
	msa_variant v;
	msa_tune_rec r;
	const msa_family *f = msa_family_get(MSA_K_DENSE_FWD);
	*wgmma = 0;
	if (!paged && max_q > 64 && msa_module_wgmma(m, MSA_K_DENSE_FWD90, "MSAGEN_DENSE")) {
		*wgmma = 1;
		msa_variant_default(&v, MSA_K_DENSE_FWD90, &m->layer, m->arch, causal);
		v.tune[1] = msa_dense90_sched(&m->layer, causal, max_q);
		return msa_kernel_get(m->ctx, &v, out);
	}
	msa_variant_default(&v, MSA_K_DENSE_FWD, &m->layer, m->arch, causal);
	if (msa_tune_lookup(m->ctx, &v, "tiles", f->ntunables, max_q, m->gpu, m->sms, &r))
		memcpy(v.tune, r.cand[r.pick].tune, sizeof v.tune);
	else if (max_q <= 64)
		v.tune[0] = 64;	/* decode: a 128-row tile would hold at most 64 live rows */
	return msa_kernel_get(m->ctx, &v, out);
}

/* Check batch+1 cumulative lengths; gives the longest q and totals. */
int msa_check_lengths(msa_ctx *ctx, int batch, const int *cu_q, const int *cu_kv,
			 int causal, int *max_q)
{
	if (batch < 1)
		return msa_ctx_fail(ctx, MSA_EINVAL, "batch = %d must be >= 1", batch);
	if (!cu_q || !cu_kv)
		return msa_ctx_fail(ctx, MSA_EINVAL, "%s is NULL", cu_q ? "cu_kv" : "cu_q");
	if (cu_q[0] != 0 || cu_kv[0] != 0)
		return msa_ctx_fail(ctx, MSA_EINVAL, "%s[0] = %d must be 0", cu_q[0] ? "cu_q" : "cu_kv",
				    cu_q[0] ? cu_q[0] : cu_kv[0]);
	*max_q = 0;
	for (int b = 0; b < batch; b++) {
		long ql = (long)cu_q[b + 1] - cu_q[b], kl = (long)cu_kv[b + 1] - cu_kv[b];
		if (ql < 0 || kl < 0)
			return msa_ctx_fail(ctx, MSA_EINVAL, "%s is not non-decreasing at request %d",
					    ql < 0 ? "cu_q" : "cu_kv", b);
		if (causal && kl < ql)
			return msa_ctx_fail(ctx, MSA_EINVAL,
					    "request %d: kv_len %ld < q_len %ld (causal needs kv_len >= q_len)",
					    b, kl, ql);
		if (ql > *max_q)
			*max_q = (int)ql;
	}
	return MSA_OK;
}

int msa_dense_plan_new(msa_module *mod, int batch, const int *cu_q, const int *cu_kv,
		       int causal, msa_dense_plan **out)
{
	msa_dense_plan *p = NULL;
	msa_ctx *ctx;
	int rc, max_q = 0;
	size_t bytes;

	if (!mod || !out)
		return mod ? msa_ctx_fail(mod->ctx, MSA_EINVAL, "msa_dense_plan_new: out is NULL") : MSA_EINVAL;
	ctx = mod->ctx;
	*out = NULL;
	if (!msa_layer_supports(&mod->layer, MSA_K_DENSE_FWD))
		return msa_ctx_fail(ctx, MSA_EUNSUPPORTED, "layer %s: no dense kernel for dtype q=%s kv=%s",
				    mod->layer.name, msa_dtype_name(mod->layer.dtype_q),
				    msa_dtype_name(mod->layer.dtype_kv));
	if (mod->layer.dtype_q == MSA_DT_FP8_E4M3)
		return msa_ctx_fail(ctx, MSA_EUNSUPPORTED, "msa_dense_plan_new: fp8 layers need msa_plan_new "
				    "(it takes the dequantisation scales)");
	if ((rc = msa_check_lengths(ctx, batch, cu_q, cu_kv, causal, &max_q)) != MSA_OK)
		return rc;
	if (!(p = calloc(1, sizeof *p)))
		return msa_ctx_fail(ctx, MSA_ENOMEM, "out of memory");
	p->mod = mod;
	p->batch = batch;
	p->max_q = max_q;
	p->causal = !!causal;
	p->total_q = cu_q[batch];
	p->total_kv = cu_kv[batch];
	p->scale_log2 = (float)(mod->layer.scale / log(2.0));
	if ((rc = msa_module_dense_kernel(mod, p->causal, max_q, 0, &p->k, &p->wgmma)) != MSA_OK)
		goto fail;
	size_t tail = 0;	/* a persistent non-causal launch may split its last wave */
	if (p->wgmma && !p->causal && mod->sms > 0) {
		if ((rc = msa_module_kernel(mod, MSA_K_COMBINE, 0, &p->kcomb)) != MSA_OK)
			goto fail;
		tail = msa_dense_tail_bytes(&mod->layer, mod->sms);
	}
	bytes = sizeof(int) * (size_t)(batch + 1);
	rc = msa_cu_check(mod->cu->MemAlloc(&p->dev_cu, 2 * bytes + 8 + (tail ? 256 + tail : 0)), "cuMemAlloc",
			  ctx->err, sizeof ctx->err);
	p->ctr = p->dev_cu + 2 * bytes;
	p->tail = tail ? (p->ctr + 8 + 255) / 256 * 256 : 0;
	if (rc == MSA_OK)
		rc = msa_cu_check(mod->cu->MemsetD32(p->ctr, 0, 2), "cuMemsetD32", ctx->err, sizeof ctx->err);
	if (rc == MSA_OK)
		rc = msa_cu_check(mod->cu->MemcpyHtoD(p->dev_cu, cu_q, bytes), "cuMemcpyHtoD", ctx->err,
				  sizeof ctx->err);
	if (rc == MSA_OK)
		rc = msa_cu_check(mod->cu->MemcpyHtoD(p->dev_cu + bytes, cu_kv, bytes), "cuMemcpyHtoD",
				  ctx->err, sizeof ctx->err);
	if (rc != MSA_OK)
		goto fail;
	*out = p;
	return MSA_OK;
fail:
	msa_dense_plan_free(p);
	return rc;
}

void msa_dense_plan_free(msa_dense_plan *p)
{
	if (!p)
		return;
	if (p->dev_cu)
		p->mod->cu->MemFree(p->dev_cu);
	free(p);
}

int msa_tmap(msa_ctx *ctx, CUtensorMap *m, const void *base, int dtype, int rank,
	     const long *dims, const long *row_bytes, const int *box, const char *what)
{
	const msa_cu *cu;
	cuuint64_t size[3], stride[2];
	cuuint32_t bx[3], estride[3] = {1, 1, 1};
	char what_fn[64];
	int rc;
	if ((rc = msa_cu_get(&cu, ctx->err, sizeof ctx->err)) != MSA_OK)
		return rc;
	if ((uintptr_t)base % 16)
		return msa_ctx_fail(ctx, MSA_EINVAL, "%s = %p is not 16-byte aligned (the wgmma kernels "
				    "load it by TMA)", what, base);
	for (int i = 0; i < rank; i++) {
		size[i] = (cuuint64_t)(dims[i] > 0 ? dims[i] : 1);
		bx[i] = (cuuint32_t)box[i];
		if (i < rank - 1)
			stride[i] = (cuuint64_t)row_bytes[i];
	}
	msa_fmt(what_fn, sizeof what_fn, "cuTensorMapEncodeTiled(%s)", what);
	return msa_cu_check(cu->TensorMapEncodeTiled(m, dtype == MSA_DT_FP16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
						      : dtype == MSA_DT_FP8_E4M3 ? CU_TENSOR_MAP_DATA_TYPE_UINT8
						      : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
						      (cuuint32_t)rank, (void *)base, size, stride, bx, estride,
						      CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
						      CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
						      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE),
			    what_fn, ctx->err, sizeof ctx->err);
}

/* [rows, heads, dim] 16-bit: boxes of 64 columns x 1 head x 128 rows. */
static int tmap3(msa_ctx *ctx, CUtensorMap *m, const void *base, int dt, int dim, int heads,
		 long rows, const char *what)
{
	const long dims[3] = {dim, heads, rows}, rb[2] = {dim * 2L, dim * 2L * heads};
	const int box[3] = {64, 1, 128};
	return msa_tmap(ctx, m, base, dt, 3, dims, rb, box, what);
}

size_t msa_dense_tail_bytes(const msa_layer *l, int sms)
{
	return (size_t)sms * 128 * ((size_t)l->head_dim * 4 + 8);
}

/* The split tail of a persistent non-causal dense_fwd90 launch of `items`
 * items: the items of a last, partial wave (items % SMs) are split over key
 * ranges so that their parts fill it (nfull whole items, then tsplit parts
 * of each of the rest; msa_combine merges the parts).  Worth it when an item
 * spans many key tiles (from 8 tiles of 128 keys a request on average) and
 * the launch has few waves (under 64: the last wave is then at least 1.5%
 * of it; on the H100 the split gained 2% at 8K and 16K tokens, 31 and 62
 * waves, and lost 1% at 32K, 124 waves).  MSAGEN_DENSE_TAIL=off turns it
 * off; a number splits that many last items whatever the shape (tests). */
static void dense_tail(const msa_dense_args *a, long items, int *nfull, int *tsplit)
{
	const char *env = getenv("MSAGEN_DENSE_TAIL");
	const long forced = env ? atol(env) : 0;
	const int sms = a->mod->sms;
	long r = items % sms, ktiles = ((long)a->total_kv + 127) / 128;
	*nfull = (int)items;
	*tsplit = 1;
	if (a->causal || !a->tail || !a->kcomb || sms <= 0 || (env && !strcmp(env, "off")))
		return;
	if (forced > 0)
		r = forced < items ? forced : items;
	else if (ktiles < 8L * a->batch || items >= 64L * sms)
		return;
	long s = r ? sms / r : 0;
	s = s < 64 ? s : 64;
	s = s < ktiles ? s : ktiles;
	if (s < 2)
		return;
	*nfull = (int)(items - r);
	*tsplit = (int)s;
}

int msa_dense_launch(const msa_dense_args *a, void *stream)
{
	msa_module *mod = a->mod;
	msa_ctx *ctx = mod->ctx;
	const msa_layer *l = &mod->layer;
	const void *q = a->q, *k = a->k, *v = a->v;
	void *out = a->out;
	float *lse = a->lse;
	CUdeviceptr cq = a->cu_q, ck = a->cu_kv, pt = a->pages;
	float scale_log2 = a->scale_log2, out_scale = a->out_scale;
	int causal = a->causal, stride = a->pt_stride, rc;

	if (a->max_q == 0)
		return MSA_OK;
	if (a->wgmma) {
		CUtensorMap mq, mk, mv;
		int mtiles = (int)((a->max_q + 127) / 128), batch = a->batch;
		CUdeviceptr ctr = a->ctr, po = 0, pl = 0, map = 0;
		int nfull = mtiles * l->heads_q * batch, tsplit = 1;
		void *args[] = {&mq, &mk, &mv, &out, &lse, &cq, &ck, &scale_log2, &out_scale, &causal,
				&mtiles, &batch, &ctr, &nfull, &tsplit, &po, &pl, &map};
		if ((rc = tmap3(ctx, &mq, q, l->dtype_q, l->head_dim, l->heads_q, a->total_q, "q")) ||
		    (rc = tmap3(ctx, &mk, k, l->dtype_kv, l->head_dim, l->heads_kv, a->total_kv, "k")) ||
		    (rc = tmap3(ctx, &mv, v, l->dtype_kv, l->head_dim, l->heads_kv, a->total_kv, "v")))
			return rc;
		if (a->kern->tune[1] & 2) {	/* persistent: one CTA per SM */
			long items = (long)mtiles * l->heads_q * batch;
			dense_tail(a, items, &nfull, &tsplit);
			long work = nfull + (items - nfull) * tsplit;
			unsigned ctas = (unsigned)(work < mod->sms ? work : mod->sms);
			/* the split tail's partials (o, lse) and row map */
			int rows = (int)(items - nfull) * 128, mode = 4;
			size_t np = (size_t)tsplit * rows;
			po = a->tail, pl = po + np * l->head_dim * 4, map = pl + np * 4;
			if ((rc = msa_launch(ctx, a->kern, ctas, 1, 1, args, stream)) || tsplit == 1)
				return rc;
			void *cargs[] = {&po, &pl, &tsplit, &rows, &mode, &out, &lse, &map};
			return msa_launch(ctx, a->kcomb, (unsigned)rows, 1, 1, cargs, stream);
		}
		return msa_launch(ctx, a->kern, (unsigned)mtiles, (unsigned)l->heads_q, (unsigned)batch, args,
				  stream);
	}
	void *args[] = {&q, &k, &v, &out, &lse, &cq, &ck, &pt, &stride, &scale_log2, &out_scale, &causal};
	return msa_launch(ctx, a->kern, (unsigned)((a->max_q + a->kern->tune[0] - 1) / a->kern->tune[0]),	/* block_m */
			  (unsigned)l->heads_q, (unsigned)a->batch, args, stream);
}

static msa_dense_args dense_args(const msa_dense_plan *p, const void *q, const void *k, const void *v,
				 void *out, float *lse)
{
	msa_dense_args a = {
		p->mod, p->k, p->wgmma, q, k, v, out, lse, p->dev_cu,
		p->dev_cu + sizeof(int) * (size_t)(p->batch + 1), 0, 0, p->scale_log2, 1.f, p->causal,
		p->batch, p->max_q, p->total_q, p->total_kv, p->ctr, p->tail, p->kcomb,
	};
	return a;
}

int msa_dense_plan_tail(const msa_dense_plan *p, int *nfull, int *tsplit)
{
	msa_dense_args a = dense_args(p, NULL, NULL, NULL, NULL, NULL);
	long items = (long)((p->max_q + 127) / 128) * p->mod->layer.heads_q * p->batch;
	*nfull = (int)items;
	*tsplit = 1;
	if (p->wgmma && (p->k->tune[1] & 2))
		dense_tail(&a, items, nfull, tsplit);
	return *tsplit > 1;
}

int msa_dense_run(msa_dense_plan *p, const void *q, const void *k, const void *v, void *out,
		  float *lse, void *stream)
{
	if (!p)
		return MSA_EINVAL;
	if (!q || !k || !v || !out || !lse)
		return msa_ctx_fail(p->mod->ctx, MSA_EINVAL, "msa_dense_run: %s is NULL",
				    !q ? "q" : !k ? "k" : !v ? "v" : !out ? "out" : "lse");
	msa_dense_args a = dense_args(p, q, k, v, out, lse);
	return msa_dense_launch(&a, stream);
}

int msa_launch_fn(msa_ctx *ctx, CUfunction fn, const char *name, unsigned gx, unsigned gy,
		  unsigned gz, unsigned threads, unsigned smem, void **args, void *stream)
{
	const msa_cu *cu;
	int rc;
	if ((rc = msa_cu_get(&cu, ctx->err, sizeof ctx->err)) != MSA_OK)
		return rc;
	return msa_cu_check(cu->LaunchKernel(fn, gx, gy, gz, threads, 1, 1, smem, (CUstream)stream,
					     args, NULL), name, ctx->err, sizeof ctx->err);
}

int msa_launch_cluster(msa_ctx *ctx, CUfunction fn, const char *name, unsigned gx, unsigned cluster,
		       unsigned threads, void **args, void *stream)
{
	const msa_cu *cu;
	CUlaunchAttribute at;
	CUlaunchConfig cfg = {0};
	int rc;
	if (cluster <= 1)
		return msa_launch_fn(ctx, fn, name, gx, 1, 1, threads, 0, args, stream);
	if ((rc = msa_cu_get(&cu, ctx->err, sizeof ctx->err)) != MSA_OK)
		return rc;
	memset(&at, 0, sizeof at);
	at.id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
	at.value.clusterDim.x = cluster;
	at.value.clusterDim.y = at.value.clusterDim.z = 1;
	cfg.gridDimX = gx;
	cfg.gridDimY = cfg.gridDimZ = 1;
	cfg.blockDimX = threads;
	cfg.blockDimY = cfg.blockDimZ = 1;
	cfg.hStream = (CUstream)stream;
	cfg.attrs = &at;
	cfg.numAttrs = 1;
	return msa_cu_check(cu->LaunchKernelEx(&cfg, fn, args, NULL), name, ctx->err, sizeof ctx->err);
}

int msa_launch(msa_ctx *ctx, const msa_kernel *k, unsigned gx, unsigned gy, unsigned gz,
	       void **args, void *stream)
{
	return msa_launch_fn(ctx, k->fn, k->name, gx, gy, gz, (unsigned)k->threads, (unsigned)k->smem,
			     args, stream);
}

/* dense_tiles.c - time every dense_fwd tile variant of a spec's first
 * layer on the GPU (CUDA events, median of 15 after a warm-up, random bf16
 * inputs, the variants taking turns), causal, one request of N tokens; on
 * sm_90a also the wgmma kernel (dense_fwd90) at each ring depth and
 * schedule, causal and not.
 * usage: build/bench/dense_tiles [SPEC] [N ...]   (default minimax-m3, 8192 32768)
 * DENSE_TILES_MODES=causal (or full) times only that mode;
 * DENSE_TILES_STAGES=2 (or 3) only that ring depth of the wgmma kernel. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int cmp_f(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return x < y ? -1 : x > y;
}

static void fill_random(const msa_cu *cu, CUdeviceptr d, size_t n, unsigned seed)
{
	unsigned short *h = malloc(n * 2);
	for (size_t i = 0; i < n; i++) {
		seed = seed * 1664525u + 1013904223u;
		float f = ((seed >> 8) / 16777216.0f) * 2 - 1;
		unsigned u;
		memcpy(&u, &f, 4);
		h[i] = (unsigned short)(u >> 16);
	}
	cu->MemcpyHtoD(d, h, n * 2);
	free(h);
}

int main(int argc, char **argv)
{
	const char *path = argc > 1 ? argv[1] : "specs/minimax-m3.lua";
	static const int bms[] = {64, 128}, bns[] = {32, 64};
	int sizes[8] = {8192, 32768}, nsizes = 2;
	char err[4096];
	msa_spec *spec;
	msa_ctx *ctx;
	msa_module *mod;
	const msa_cu *cu;

	if (argc > 2)
		for (nsizes = 0; nsizes < 8 && nsizes + 2 < argc; nsizes++)
			sizes[nsizes] = atoi(argv[nsizes + 2]);
	if (msa_spec_load(path, &spec, err, sizeof err) || msa_ctx_new(NULL, &ctx) ||
	    msa_module_new(ctx, &spec->layers[0], &mod)) {
		fprintf(stderr, "%s %s\n", err, ctx ? msa_ctx_error(ctx) : "");
		return 1;
	}
	cu = mod->cu;
	const msa_layer *l = &spec->layers[0];
	const char *modes = getenv("DENSE_TILES_MODES");	/* "causal", "full" or both (default) */
	const char *stages = getenv("DENSE_TILES_STAGES");	/* one ring depth of dense_fwd90 */
	printf("%-62s %8s %10s %9s\n", "variant", "tokens", "median ms", "TFLOP/s");
	for (int si = 0; si < nsizes; si++) {
		int n = sizes[si], cq[2] = {0, n};
		size_t nq = (size_t)n * l->heads_q * l->head_dim, nk = (size_t)n * l->heads_kv * l->head_dim;
		CUdeviceptr q, k, v, o, lse;
		cu->MemAlloc(&q, nq * 2);
		cu->MemAlloc(&k, nk * 2);
		cu->MemAlloc(&v, nk * 2);
		cu->MemAlloc(&o, nq * 2);
		cu->MemAlloc(&lse, (size_t)n * l->heads_q * 4);
		fill_random(cu, q, nq, 1);
		fill_random(cu, k, nk, 2);
		fill_random(cu, v, nk, 3);
		/* c: 0 causal, 1 not; w: 0 mma.sync tiles, 1 wgmma stages x schedules.
		 * The variants take turns, one run each per round, so clock drift
		 * as the card warms up spreads over all of them. */
		for (int c = 0; c < 2; c++) {
			if (modes && !strstr(modes, c ? "full" : "causal"))
				continue;
			enum { NV = 12, ROUNDS = 15 };
			msa_kernel *kern[NV];
			int wg[NV], nkern = 0;
			float t[NV][ROUNDS];
			msa_dense_plan *p;
			if (msa_dense_plan_new(mod, 1, cq, cq, !c, &p)) {
				fprintf(stderr, "%s\n", msa_ctx_error(ctx));
				return 1;
			}
			for (int w = 0; w < 2; w++) {
				if (w && !msa_layer_supports_on(l, MSA_K_DENSE_FWD90, mod->arch))
					continue;
				if (c && !w)
					continue;	/* the portable tiles: causal only */
				for (int i = 0; i < (w ? 8 : 4); i++) {
					if (w && stages && atoi(stages) != 2 + i / 4)
						continue;
					msa_variant var;
					char name[256];
					msa_variant_default(&var, w ? MSA_K_DENSE_FWD90 : MSA_K_DENSE_FWD, l, mod->arch, !c);
					if (w) {
						var.tune[0] = 2 + i / 4;	/* stages */
						var.tune[1] = i % 4;	/* schedule */
					} else {
						var.tune[0] = bms[i / 2];
						var.tune[1] = bns[i % 2];
					}
					msa_variant_name(&var, name, sizeof name);
					if (msa_kernel_get(ctx, &var, &kern[nkern])) {
						printf("%-62s failed: %s\n", name, msa_ctx_error(ctx));
						continue;
					}
					wg[nkern++] = w;
				}
			}
			double flops = 4.0 * l->head_dim * l->heads_q * (c ? (double)n * n : (double)n * (n + 1) / 2);
			CUevent e0, e1;
			cu->EventCreate(&e0, 0);
			cu->EventCreate(&e1, 0);
			for (int r = -1; r < ROUNDS; r++)	/* round -1: warm-up */
				for (int i = 0; i < nkern; i++) {
					p->k = kern[i];
					p->wgmma = wg[i];
					cu->EventRecord(e0, NULL);
					msa_dense_run(p, (void *)q, (void *)k, (void *)v, (void *)o, (float *)lse, NULL);
					cu->EventRecord(e1, NULL);
					cu->EventSynchronize(e1);
					if (r >= 0)
						cu->EventElapsedTime(&t[i][r], e0, e1);
				}
			for (int i = 0; i < nkern; i++) {
				qsort(t[i], ROUNDS, sizeof t[i][0], cmp_f);
				printf("%-62s %8d %10.3f %9.0f\n", kern[i]->name, n, t[i][ROUNDS / 2],
				       flops / t[i][ROUNDS / 2] / 1e9);
			}
			cu->EventDestroy(e0);
			cu->EventDestroy(e1);
			msa_dense_plan_free(p);
		}
		cu->MemFree(q);
		cu->MemFree(k);
		cu->MemFree(v);
		cu->MemFree(o);
		cu->MemFree(lse);
	}
	msa_module_free(mod);
	msa_ctx_free(ctx);
	msa_spec_free(spec);
	return 0;
}

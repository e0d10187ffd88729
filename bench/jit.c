/* jit.c - JIT figures: cold NVRTC compile per variant, the whole spec cold
 * on every core, warm disk-cache load per variant, in-memory hit.
 * usage: build/bench/jit [SPEC] [ARCH]   (defaults: specs/minimax-m3.lua, the
 * GPU's arch or sm_90a).  Uses a fresh temporary cache directory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof *v, cmp_d);
	return n ? v[n / 2] : 0;
}

int main(int argc, char **argv)
{
	const char *path = argc > 1 ? argv[1] : "specs/minimax-m3.lua";
	char err[4096], dir[] = "/tmp/msagen-jit-XXXXXX", arch[16] = "sm_90a", cmd[300];
	msa_spec *spec;
	msa_ctx *ctx;
	msa_ctx_opts o = {0};
	msa_variant *vs;
	msa_build_stats st;
	int n, gpu;
	const msa_cu *cu;

	if (msa_spec_load(path, &spec, err, sizeof err)) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	if (!mkdtemp(dir))
		return 1;
	o.cache_dir = dir;
	gpu = msa_cu_get(&cu, err, sizeof err) == MSA_OK;
	msa_ctx_new(&o, &ctx);
	if (argc > 2)
		msa_fmt(arch, sizeof arch, "%s", argv[2]);
	else if (gpu && msa_ctx_arch(ctx, arch, sizeof arch) != MSA_OK)
		gpu = 0;
	if (msa_variants_for_layer(&spec->layers[0], arch, &vs, &n, err, sizeof err)) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	printf("spec %s, layer %s, arch %s, %d variants, %ld cores, GPU %s\n", path,
	       spec->layers[0].name, arch, n, sysconf(_SC_NPROCESSORS_ONLN), gpu ? "yes" : "no");

	/* cold, one at a time, in one process (the first pays NVRTC start-up) */
	double *cold = calloc((size_t)n, sizeof *cold), *disk = calloc((size_t)n, sizeof *disk);
	for (int i = 0; i < n; i++) {
		char name[256];
		msa_cubin cb;
		double t0 = msa_now_ms();
		msa_variant_name(&vs[i], name, sizeof name);
		if (msa_obtain_cubin(ctx, &vs[i], &cb, err, sizeof err)) {
			fprintf(stderr, "%s\n", err);
			return 1;
		}
		cold[i] = msa_now_ms() - t0;
		printf("cold compile %-70s %8.1f ms  %7zu B\n", name, cold[i], cb.cubin_len);
		free(cb.cubin);
	}
	/* warm disk: read + verify (+ load on the GPU) */
	for (int i = 0; i < n; i++) {
		msa_cubin cb;
		double t0 = msa_now_ms();
		msa_obtain_cubin(ctx, &vs[i], &cb, err, sizeof err);
		disk[i] = msa_now_ms() - t0;
		free(cb.cubin);
	}
	printf("warm disk-cache read (emit + key + read + sha256 verify), median: %.3f ms\n",
	       median(disk, n));
	if (gpu) {
		msa_kernel *k;
		for (int i = 0; i < n; i++) {
			double t0 = msa_now_ms();
			if (msa_kernel_get(ctx, &vs[i], &k)) {
				fprintf(stderr, "%s\n", msa_ctx_error(ctx));
				return 1;
			}
			disk[i] = msa_now_ms() - t0;
		}
		printf("warm disk-cache load incl. cuLibraryLoadData, median: %.3f ms\n", median(disk, n));
		int reps = 1000000;
		double t0 = msa_now_ms();
		for (int r = 0; r < reps; r++)
			msa_kernel_get(ctx, &vs[r % n], &k);
		printf("in-memory hit (msa_kernel_get from a variant): %.0f ns\n",
		       (msa_now_ms() - t0) * 1e6 / reps);
	}
	/* the whole spec cold, every core */
	msa_disk_clear(dir);
	msa_build(ctx, spec, arch, 0, NULL, NULL, &st);
	printf("whole spec cold for %s on %ld cores: %d variants, %d compiled, %d cached, %d failed, %.2f s\n",
	       arch, sysconf(_SC_NPROCESSORS_ONLN), st.variants, st.compiled, st.disk_hits, st.failed,
	       st.seconds);
	msa_build(ctx, spec, NULL, 0, NULL, NULL, &st);
	printf("whole spec, every arch it names: %d variants, %d compiled, %d cached, %.2f s\n",
	       st.variants, st.compiled, st.disk_hits, st.seconds);
	msa_fmt(cmd, sizeof cmd, "rm -rf %s", dir);
	if (system(cmd) != 0)
		return 1;
	free(cold);
	free(disk);
	free(vs);
	msa_ctx_free(ctx);
	msa_spec_free(spec);
	return 0;
}

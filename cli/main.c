/* main.c - the msagen command line: emit, build, cache. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tune.h"
#include "internal.h"

static const char usage_main[] =
	"usage: msagen <command> [options]\n"
	"\n"
	"Generate, compile and cache CUDA kernels for sparse (MSA) and dense\n"
	"attention from a Lua spec.\n"
	"\n"
	"commands:\n"
	"  emit SPEC [-o DIR] [--arch A]   write the generated CUDA sources\n"
	"  build SPEC [--arch A] [-j N]    compile every variant into the disk cache\n"
	"  cache ls|verify|clear           inspect or empty the disk cache\n"
	"  tune SPEC [--tokens ...]        time the tuning space on the GPU and record\n"
	"                                  the winners that plans then use\n"
	"  check SPEC [--seed N]           run every kernel on the GPU against the\n"
	"                                  float64 reference and print a table\n"
	"  version                         print versions\n"
	"\n"
	"common options:\n"
	"  --cache-dir DIR   cache location (default: $MSAGEN_CACHE_DIR, else\n"
	"                    $XDG_CACHE_HOME/msagen, else ~/.cache/msagen)\n"
	"  -h, --help        help for a command: msagen <command> --help\n";

static const char usage_emit[] =
	"usage: msagen emit SPEC [-o DIR] [--arch A]\n"
	"\n"
	"Write one CUDA source per kernel variant of SPEC (deterministic: same spec,\n"
	"same bytes).  Without -o the sources go to standard output.  --arch picks\n"
	"one target (sm_80, sm_86, sm_89, sm_90a); default: each layer's own.\n";

static const char usage_build[] =
	"usage: msagen build SPEC [--arch A] [-j N] [--cache-dir DIR] [-q]\n"
	"\n"
	"Compile every variant of every layer of SPEC with NVRTC into the disk cache\n"
	"(no GPU needed).  Variants already cached are loaded and checked, not\n"
	"recompiled.  -j N: parallel compiles (default: one per core).  -q: summary\n"
	"only.  Exit status 1 if any variant fails.\n";

static const char usage_cache[] =
	"usage: msagen cache ls|verify|clear [--cache-dir DIR]\n"
	"\n"
	"  ls      one line per entry: file, size, variant name, registers, spills\n"
	"  verify  check every entry's header and checksum; exit 1 if one is bad\n"
	"  clear   remove every entry\n";

static const char usage_check[] =
	"usage: msagen check SPEC [--seed N] [--cache-dir DIR] [--index-amp A]\n"
	"\n"
	"For every layer of SPEC, run each kernel (index scores, top-k, fused index\n"
	"+ top-k, sparse attention, the whole MSA layer, dense) on the GPU on five\n"
	"random shapes (prefill, chunked prefill over shuffled pages, decode over\n"
	"pages with split-KV, one-query decode over long contexts, and three\n"
	"one-query requests of 66K-80K tokens) and compare with\n"
	"a float64 CPU reference.  Prints one row per kernel and shape; exit status\n"
	"1 if any fails.  Inputs are fresh random values (page slots no request\n"
	"fills hold NaN); --seed repeats a run.  Index q and k are uniform in\n"
	"+-A (default 1; up to 448): with fp8 index tensors, A = 96 takes most\n"
	"block sums past the f16 accumulators' range, which the index kernel must\n"
	"detect and recompute in fp32.  Needs a GPU.\n";

typedef struct args {
	const char *pos[4];
	int npos;
	const char *out_dir, *arch, *cache_dir, *seed, *index_amp;
	int jobs, quiet, help;
} args;

static int parse_args(int argc, char **argv, args *a, const char *usage)
{
	memset(a, 0, sizeof *a);
	for (int i = 0; i < argc; i++) {
		const char *s = argv[i];
		const char **dst = NULL;
		if (!strcmp(s, "-h") || !strcmp(s, "--help"))
			a->help = 1;
		else if (!strcmp(s, "-q") || !strcmp(s, "--quiet"))
			a->quiet = 1;
		else if (!strcmp(s, "-o"))
			dst = &a->out_dir;
		else if (!strcmp(s, "--arch"))
			dst = &a->arch;
		else if (!strcmp(s, "--cache-dir"))
			dst = &a->cache_dir;
		else if (!strcmp(s, "--seed"))
			dst = &a->seed;
		else if (!strcmp(s, "--index-amp") && usage == usage_check)
			dst = &a->index_amp;
		else if (!strcmp(s, "-j")) {
			if (i + 1 >= argc || (a->jobs = atoi(argv[i + 1])) <= 0) {
				fprintf(stderr, "msagen: -j needs a positive number\n%s", usage);
				return 2;
			}
			i++;
		} else if (s[0] == '-' && s[1]) {
			fprintf(stderr, "msagen: unknown option '%s'\n%s", s, usage);
			return 2;
		} else if (a->npos < MSA_COUNT(a->pos))
			a->pos[a->npos++] = s;
		if (dst) {
			if (i + 1 >= argc) {
				fprintf(stderr, "msagen: %s needs a value\n%s", s, usage);
				return 2;
			}
			*dst = argv[++i];
		}
	}
	if (a->arch && !msa_arch_valid(a->arch)) {
		fprintf(stderr, "msagen: --arch %s: unknown (sm_80, sm_86, sm_89, sm_90a)\n", a->arch);
		return 2;
	}
	return 0;
}

static int load_spec(const args *a, const char *usage, msa_spec **spec)
{
	char err[1024];
	if (a->npos != 1) {
		fprintf(stderr, "msagen: expected one SPEC file\n%s", usage);
		return 2;
	}
	if (msa_spec_load(a->pos[0], spec, err, sizeof err) != MSA_OK) {
		fprintf(stderr, "msagen: %s\n", err);
		return 1;
	}
	return 0;
}

static int write_source(const char *dir, const char *name, const char *src, size_t len)
{
	char path[1400];
	FILE *f;
	msa_fmt(path, sizeof path, "%s/%s.cu", dir, name);
	if (!(f = fopen(path, "wb")) || fwrite(src, 1, len, f) != len || fclose(f) != 0) {
		perror(path);
		return 1;
	}
	printf("%s\n", path);
	return 0;
}

static int emit_layer(const msa_layer *l, const char *arch, const char *dir)
{
	char err[1024];
	int rc = 0;
	for (int ai = 0; ai < (arch ? 1 : l->narch) && !rc; ai++) {
		msa_variant *vs;
		int n;
		if (msa_variants_for_layer(l, arch ? arch : l->arch[ai], &vs, &n, err, sizeof err)) {
			fprintf(stderr, "msagen: %s\n", err);
			return 1;
		}
		for (int i = 0; i < n && !rc; i++) {
			char name[256], *src;
			size_t len;
			msa_variant_name(&vs[i], name, sizeof name);
			if (msa_emit(&vs[i], &src, &len, err, sizeof err)) {
				fprintf(stderr, "msagen: %s: %s\n", name, err);
				rc = 1;
				break;
			}
			if (dir)
				rc = write_source(dir, name, src, len);
			else
				fwrite(src, 1, len, stdout);
			free(src);
		}
		free(vs);
	}
	return rc;
}

static int cmd_emit(int argc, char **argv)
{
	args a;
	msa_spec *spec = NULL;
	int rc = parse_args(argc, argv, &a, usage_emit);
	if (rc || a.help) {
		fputs(usage_emit, a.help ? stdout : stderr);
		return rc;
	}
	if ((rc = load_spec(&a, usage_emit, &spec)))
		return rc;
	if (a.out_dir && msa_mkdirs(a.out_dir) != MSA_OK) {
		fprintf(stderr, "msagen: cannot create directory %s\n", a.out_dir);
		rc = 1;
	}
	for (int i = 0; i < spec->nlayers && !rc; i++)
		rc = emit_layer(&spec->layers[i], a.arch, a.out_dir);
	msa_spec_free(spec);
	return rc;
}

static void print_progress(void *arg, int done, int total, const char *line)
{
	const args *a = arg;
	if (!a->quiet || strncmp(line, "FAILED", 6) == 0)
		fprintf(stderr, "[%d/%d] %s\n", done, total, line);
}

static int cmd_build(int argc, char **argv)
{
	args a;
	msa_spec *spec = NULL;
	msa_ctx *ctx = NULL;
	msa_ctx_opts o = {0};
	msa_build_stats st;
	int rc = parse_args(argc, argv, &a, usage_build);

	if (rc || a.help) {
		fputs(usage_build, a.help ? stdout : stderr);
		return rc;
	}
	if ((rc = load_spec(&a, usage_build, &spec)))
		return rc;
	o.cache_dir = a.cache_dir;
	if (msa_ctx_new(&o, &ctx) != MSA_OK) {
		fprintf(stderr, "msagen: cannot create a context\n");
		msa_spec_free(spec);
		return 1;
	}
	fprintf(stderr, "msagen: building %s into %s\n", spec->path, msa_ctx_cache_dir(ctx));
	rc = msa_build(ctx, spec, a.arch, a.jobs, print_progress, &a, &st);
	printf("%d variants: %d compiled, %d from cache, %d failed in %.2f s\n", st.variants,
	       st.compiled, st.disk_hits, st.failed, st.seconds);
	if (rc != MSA_OK)
		fprintf(stderr, "msagen: %s\n", msa_ctx_error(ctx));
	msa_ctx_free(ctx);
	msa_spec_free(spec);
	return rc != MSA_OK;
}

static const char *meta_field(const char *meta, const char *key, char *buf, size_t n)
{
	const char *p = meta;
	size_t kl = strlen(key);
	msa_fmt(buf, n, "?");
	while (p && *p) {
		if (!strncmp(p, key, kl) && p[kl] == '=') {
			size_t l = strcspn(p + kl + 1, "\n");
			msa_fmt(buf, n, "%.*s", (int)l, p + kl + 1);
			break;
		}
		p = strchr(p, '\n');
		p = p ? p + 1 : NULL;
	}
	return buf;
}

typedef struct cache_walk {
	int verify, bad;
	size_t bytes;
} cache_walk;

static void print_entry(void *arg, const msa_disk_info *in)
{
	cache_walk *w = arg;
	char name[256], regs[16], spill[16], ms[16];
	w->bytes += in->size;
	w->bad += !in->ok;
	if (w->verify && in->ok)
		return;
	if (!in->ok) {
		printf("%-20.20s %9zu  BAD: %s\n", in->file, in->size, in->problem);
		return;
	}
	printf("%-20.20s %9zu  %s  regs=%s spill=%s compile=%sms\n", in->file, in->size,
	       meta_field(in->meta, "name", name, sizeof name), meta_field(in->meta, "regs", regs, sizeof regs),
	       meta_field(in->meta, "spill_bytes", spill, sizeof spill),
	       meta_field(in->meta, "compile_ms", ms, sizeof ms));
}

static int cmd_cache(int argc, char **argv)
{
	args a;
	msa_ctx *ctx = NULL;
	msa_ctx_opts o = {0};
	cache_walk w = {0};
	int rc = parse_args(argc, argv, &a, usage_cache), n;

	if (rc || a.help || a.npos != 1) {
		fputs(usage_cache, a.help ? stdout : stderr);
		return a.help ? 0 : 2;
	}
	o.cache_dir = a.cache_dir;
	if (msa_ctx_new(&o, &ctx) != MSA_OK)
		return 1;
	const char *dir = msa_ctx_cache_dir(ctx);
	if (!strcmp(a.pos[0], "clear")) {
		n = msa_disk_clear(dir);
		printf("removed %d entries from %s\n", n < 0 ? 0 : n, dir);
		rc = n < 0;
	} else if (!strcmp(a.pos[0], "ls") || !strcmp(a.pos[0], "verify")) {
		w.verify = !strcmp(a.pos[0], "verify");
		n = msa_disk_list(dir, print_entry, &w);
		printf("%d entries, %zu bytes, %d bad, in %s\n", n < 0 ? 0 : n, w.bytes, w.bad, dir);
		rc = n < 0 || (w.verify && w.bad);
	} else {
		fprintf(stderr, "msagen: cache: unknown action '%s'\n%s", a.pos[0], usage_cache);
		rc = 2;
	}
	msa_ctx_free(ctx);
	return rc;
}

static void print_row(void *arg, const chk_row *r)
{
	int *n = arg;
	n[0]++;
	n[1] += !r->pass;
	printf("%-14s %-46s %9.2e %7.0e  %s  %s\n", r->stage, r->shape, r->err, r->tol,
	       r->pass ? "pass" : "FAIL", r->note);
	fflush(stdout);
}

static int cmd_check(int argc, char **argv)
{
	static const chk_case shapes[] = {
		{2, 96, 300, 0, 0, 0, 0, 0, 0},	/* prefill, contiguous KV */
		{3, 64, 1500, 1, 0, 0, 0, 0, 0},	/* chunked prefill over shuffled pages */
		{3, 8, 3000, 1, 0, 0, 0, 0, 0},	/* decode over pages; the plan splits */
		{2, 1, 20000, 1, 0, 0, 0, 0, 0},	/* one-query decode: on sm_90a the index kernel
						   splits and merges its top-k lists itself */
		{3, 1, 80000, 1, 0, 0, 0, 0, 66000},	/* one-query decode of several long requests */
	};
	args a;
	msa_spec *spec = NULL;
	msa_ctx_opts o = {0};
	gpu_env env;
	int rc = parse_args(argc, argv, &a, usage_check), n[2] = {0, 0};
	double amp = 1.0;

	if (rc || a.help) {
		fputs(usage_check, a.help ? stdout : stderr);
		return rc;
	}
	if (a.index_amp) {
		char *end;
		amp = strtod(a.index_amp, &end);
		if (*end || !(amp > 0 && amp <= 448)) {
			fprintf(stderr, "msagen: --index-amp %s: want a number in (0, 448]\n%s", a.index_amp,
				usage_check);
			return 2;
		}
	}
	if ((rc = load_spec(&a, usage_check, &spec)))
		return rc;
	o.cache_dir = a.cache_dir;
	if (a.seed)
		setenv("MSAGEN_SEED", a.seed, 1);
	if (gpu_init(&env, &o) != MSA_OK) {
		fprintf(stderr, "msagen: check needs a GPU: %s\n", env.err);
		msa_spec_free(spec);
		return 1;
	}
	ref_rng rng = ref_rng_new(env.seed);
	printf("msagen check %s: GPU compute capability %d.%d, seed %llu\n", spec->path, env.cc / 10,
	       env.cc % 10, (unsigned long long)env.seed);
	printf("%-14s %-46s %9s %7s  %s\n", "kernel", "shape", "max err", "tol", "result");
	for (int li = 0; li < spec->nlayers; li++)
		for (int si = 0; si < MSA_COUNT(shapes); si++) {
			chk_case c = shapes[si];
			c.index_amp = amp;
			chk_run(&env, &spec->layers[li], &c, &rng, print_row, n);
		}
	printf("%d checks, %d failed: %s\n", n[0], n[1], n[1] ? "FAIL" : "all pass");
	gpu_done(&env);
	msa_spec_free(spec);
	return n[1] != 0 || n[0] == 0;
}

int main(int argc, char **argv)
{
	const char *cmd = argc > 1 ? argv[1] : NULL;
	char ver[32];

	if (!cmd || !strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
		fputs(usage_main, cmd ? stdout : stderr);
		return cmd ? 0 : 2;
	}
	if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
		msa_nvrtc_version_string(ver, sizeof ver);
		printf("msagen %s (NVRTC %s)\n", MSAGEN_VERSION, ver);
		return 0;
	}
	if (!strcmp(cmd, "emit"))
		return cmd_emit(argc - 2, argv + 2);
	if (!strcmp(cmd, "build"))
		return cmd_build(argc - 2, argv + 2);
	if (!strcmp(cmd, "cache"))
		return cmd_cache(argc - 2, argv + 2);
	if (!strcmp(cmd, "check"))
		return cmd_check(argc - 2, argv + 2);
	if (!strcmp(cmd, "tune"))
		return cmd_tune(argc - 2, argv + 2);
	fprintf(stderr, "msagen: unknown command '%s'\n%s", cmd, usage_main);
	return 2;
}

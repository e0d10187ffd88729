/* t_emit.c - the generator: determinism, #line mapping, variant sets, and
 * every template compiling through NVRTC for sm_80 and sm_90a (no GPU). */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "tap.h"

static const char tiny[] =
	"layer { name = 'a', heads = { q = 8, kv = 2 }, head_dim = 64, block = 64, topk = 4,\n"
	"        arch = { 'sm_90a', 'sm_80' },\n"
	"        tune = { dense_fwd = { block_m = { 64, 128 }, block_n = { 32, 64 } } } }\n"
	"layer { name = 'b', heads = { q = 16, kv = 1 }, head_dim = 128, dtype = 'fp16', causal = false }\n";

static msa_spec *load(const char *text)
{
	char err[512];
	msa_spec *s = NULL;
	if (msa_spec_load_string("t.lua", text, strlen(text), &s, err, sizeof err) != MSA_OK)
		bail("spec: %s", err);
	return s;
}

static void check_determinism(const msa_layer *l)
{
	msa_variant v;
	char *a, *b, err[256];
	size_t la, lb;
	msa_variant_default(&v, MSA_K_DENSE_FWD, l, "sm_90a", 1);
	ok(msa_emit(&v, &a, &la, err, sizeof err) == MSA_OK, "emit dense_fwd");
	ok(msa_emit(&v, &b, &lb, err, sizeof err) == MSA_OK, "emit again");
	ok(la == lb && memcmp(a, b, la) == 0, "same variant, same bytes");
	like(a, "#define MSA_HQ 8\n", "prelude has the spec constants");
	like(a, "#line 1 \"templates/dense_fwd.cu\"", "#line points at the template");
	like(a, "#line 1 \"templates/common.cuh\"", "common.cuh inlined with #line");
	ok(strstr(a, "#include \"") == NULL, "no #include left: one self-contained source");
	v.tune[0] = v.tune[0] == 64 ? 128 : 64;
	free(b);
	ok(msa_emit(&v, &b, &lb, err, sizeof err) == MSA_OK && strcmp(a, b) != 0,
	   "another tunable, other source");
	free(a);
	free(b);
}

static void check_variants(const msa_spec *s)
{
	msa_variant *vs;
	int n;
	char err[256], name[256];
	ok(msa_variants_for_layer(&s->layers[0], "sm_80", &vs, &n, err, sizeof err) == MSA_OK,
	   "variants of layer a");
	int dense = 0;
	for (int i = 0; i < n; i++)
		dense += vs[i].kind == MSA_K_DENSE_FWD;
	is_int(dense, 4, "tune space 2 x 2 gives 4 dense variants");
	msa_variant_name(&vs[3], name, sizeof name);
	is_string(name, "dense_fwd.bf16.bf16.hq8.hkv2.d64.bk64.causal.block_m128.block_n64.sm_80",
		  "readable variant name");
	free(vs);
	ok(msa_variants_for_layer(&s->layers[1], "sm_90a", &vs, &n, err, sizeof err) == MSA_OK &&
	   n == MSA_K_COUNT + 1 && vs[0].kind == MSA_K_DENSE_FWD,
	   "no tune table: one default variant per kernel family (dense_fwd90: two schedules)");
	msa_variant_name(&vs[0], name, sizeof name);
	like(name, "dense_fwd.fp16.fp16.hq16.hkv1.d128.bk128.full.", "fp16 non-causal name");
	free(vs);
}

static void check_bad_tune(void)
{
	const char *bad[][2] = {
		{"layer { name='x', heads={q=4,kv=2}, head_dim=64,\n tune = { dense_fwd = { block_m = {48} } } }",
		 "t.lua:1: tune.dense_fwd.block_m = 48 is not supported"},
		{"layer { name='x', heads={q=4,kv=2}, head_dim=64, tune = { nope = { a = 1 } } }",
		 "tune.nope: no such kernel"},
		{"layer { name='x', heads={q=4,kv=2}, head_dim=64, tune = { dense_fwd = { warps = 4 } } }",
		 "tune.dense_fwd.warps: no such tunable"},
	};
	for (int i = 0; i < MSA_COUNT(bad); i++) {
		msa_spec *s = load(bad[i][0]);
		msa_variant *vs = NULL;
		int n;
		char err[256] = "";
		ok(msa_variants_for_layer(&s->layers[0], "sm_90a", &vs, &n, err, sizeof err) == MSA_ESPEC,
		   "bad tune table %d rejected", i);
		like(err, bad[i][1], "message names the field");
		free(vs);
		msa_spec_free(s);
	}
}

/* ptxas C7514 and kin: a use of accumulator registers it could not prove
 * safe made it wait on every wgmma, a silent loss of the overlap. */
static void check_not_serialised(const char *name, const char *log)
{
	const char *ser = log ? strstr(log, "instructions are serialized") : NULL;
	ok(!ser, "%s: wgmma not serialised", name);
	if (ser)
		diag("%.200s", ser);
}

/* Every variant of every layer, both archs, compiles; the resource report
 * shows no spills and no serialised wgmma. */
static void check_compiles(const msa_spec *s)
{
	static const char *const archs[] = {"sm_80", "sm_90a"};
	for (int li = 0; li < s->nlayers; li++) {
		for (int a = 0; a < 2; a++) {
			msa_variant *vs;
			int n;
			char err[4096];
			msa_variants_for_layer(&s->layers[li], archs[a], &vs, &n, err, sizeof err);
			for (int i = 0; i < n; i++) {
				char name[256], *src;
				size_t len;
				msa_compiled c;
				msa_variant_name(&vs[i], name, sizeof name);
				msa_emit(&vs[i], &src, &len, err, sizeof err);
				int rc = msa_nvrtc_compile(src, len, name, archs[a], &c, err, sizeof err);
				ok(rc == MSA_OK && c.cubin_len > 0, "NVRTC compiles %s (%.0f ms)", name, c.ms);
				if (rc != MSA_OK)
					diag("%s", err);
				/* NVRTC answers a source it compiled before from its own
				 * cache, without the ptxas report: nothing to check then */
				if (rc == MSA_OK && !(c.log && strstr(c.log, "spill stores")))
					skip(1, "%s: NVRTC gave no resource report (answered from its cache)", name);
				else {
					ok(c.log && strstr(c.log, " 0 bytes spill stores"), "%s: no spills", name);
					check_not_serialised(name, c.log);
				}
				msa_compiled_clear(&c);
				free(src);
			}
			free(vs);
		}
	}
}

/* Warp-specialised kernels hand registers from the producer warpgroup to
 * the consumers with setmaxnreg; the consumers' setmaxnreg.inc waits until
 * the CTA's pool, fixed at launch (registers x threads), holds every
 * warpgroup's new count, so a split that does not fit hangs the kernel.
 * Check each such kernel's split against what ptxas gave it. */
static const char wspec_text[] =
	"layer { name = 'w', heads = { q = 64, kv = 4 }, head_dim = 128, index_dim = 128 }\n"
	"layer { name = 'f', heads = { q = 64, kv = 4 }, head_dim = 128, index_dim = 128,\n"
	"        dtype = { q = 'bf16', kv = 'bf16', index = 'fp8_e4m3', out = 'bf16' }, causal = false }\n";
enum { NWSPEC = 11 };

/* The number after the first pat in src; a macro name there is looked up
 * as "#define NAME number". */
static int first_int_after(const char *src, const char *pat)
{
	const char *p = strstr(src, pat);
	if (!p)
		return -1;
	p += strlen(pat);
	if (*p >= '0' && *p <= '9')
		return atoi(p);
	char def[80];
	snprintf(def, sizeof def, "#define %.*s ", (int)strspn(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789"), p);
	return strcmp(def, "#define  ") ? first_int_after(src, def) : -1;
}

static void check_register_split(void)
{
	msa_spec *s = load(wspec_text);
	msa_variant vs[NWSPEC];
	for (int i = 0; i < 5; i++) {	/* dense_fwd90: stages 2 x sched 0-3, stages 3 x sched 3 */
		msa_variant_default(&vs[i], MSA_K_DENSE_FWD90, &s->layers[0], "sm_90a", 1);
		vs[i].tune[0] = i < 4 ? 2 : 3;
		vs[i].tune[1] = i < 4 ? i : 3;
	}
	for (int i = 5; i < 9; i++) {	/* index_topk90: bf16, fp8 x 2, 3 consumers */
		msa_variant_default(&vs[i], MSA_K_INDEX_TOPK90, &s->layers[(i - 5) % 2], "sm_90a", 1);
		vs[i].tune[0] = i < 7 ? 2 : 3;
	}
	for (int i = 9; i < NWSPEC; i++) {	/* sparse_kvo90: chunks of 4 (3 Q stages) and 16 tiles (2) */
		msa_variant_default(&vs[i], MSA_K_SPARSE_KVO90, &s->layers[0], "sm_90a", 1);
		vs[i].tune[0] = i == 9 ? 4 : 16;
	}
	for (int i = 0; i < NWSPEC; i++) {
		char name[256], err[4096], *src;
		size_t len;
		int threads, smem, regs = -1;
		msa_compiled c;
		msa_variant_name(&vs[i], name, sizeof name);
		msa_variant_launch(&vs[i], &threads, &smem);
		msa_emit(&vs[i], &src, &len, err, sizeof err);
		const int dec = first_int_after(src, "setmaxnreg_dec<"), inc = first_int_after(src, "setmaxnreg_inc<");
		int rc = msa_nvrtc_compile(src, len, name, "sm_90a", &c, err, sizeof err);
		ok(rc == MSA_OK && dec > 0 && inc > 0, "%s compiles and hands registers over (dec %d, inc %d)",
		   name, dec, inc);
		const char *used = rc == MSA_OK && c.log ? strstr(c.log, "Used ") : NULL;
		if (used)
			sscanf(used, "Used %d registers", &regs);
		if (regs <= 0) {
			skip(2, "%s: NVRTC gave no resource report (answered from its cache)", name);
		} else {
			check_not_serialised(name, c.log);
			ok(dec * 128 + inc * (threads - 128) <= regs * threads,
			   "%s: %d x 128 + %d x %d registers fit the launch's %d x %d", name, dec, inc,
			   threads - 128, regs, threads);
		}
		if (rc == MSA_OK)
			msa_compiled_clear(&c);
		free(src);
	}
	msa_spec_free(s);
}

/* index_topk90's consumer warpgroups: 3 by default, 2 where 192 rows do not
 * hold whole queries (128 index heads); a spec's choice wins, and one that
 * does not fit is a spec error naming the field. */
static void check_index_consumers(void)
{
	static const struct {
		const char *text;
		int want;	/* consumers; 0: the spec is rejected */
	} cases[] = {
		{"layer { name = 'm3', heads = { q = 64, kv = 4 }, head_dim = 128 }", 3},
		{"layer { name = 'k128', heads = { q = 128, kv = 128 }, head_dim = 64, index_dim = 64 }", 2},
		{"layer { name = 'm3', heads = { q = 64, kv = 4 }, head_dim = 128,\n"
		 " tune = { index_topk90 = { consumers = { 2 } } } }", 2},
		{"layer { name = 'k128', heads = { q = 128, kv = 128 }, head_dim = 64, index_dim = 64,\n"
		 " tune = { index_topk90 = { consumers = { 3 } } } }", 0},
	};
	for (int i = 0; i < MSA_COUNT(cases); i++) {
		msa_spec *s = load(cases[i].text);
		const msa_layer *l = &s->layers[0];
		msa_variant *vs = NULL;
		int n = 0, got = 0;
		char err[512] = "";
		int rc = msa_variants_for_layer(l, "sm_90a", &vs, &n, err, sizeof err);
		for (int k = 0; k < n; k++)
			if (vs[k].kind == MSA_K_INDEX_TOPK90)
				got = vs[k].tune[0];
		if (cases[i].want)
			ok(rc == MSA_OK && got == cases[i].want && msa_index90_consumers(l) == got,
			   "layer %s case %d: index_topk90 builds and plans take %d consumers (got %d)", l->name, i,
			   cases[i].want, got);
		else
			ok(rc == MSA_ESPEC && strstr(err, "t.lua:1: tune.index_topk90.consumers = 3") &&
			   strstr(err, "128 index heads"), "layer %s: 3 consumers rejected: %s", l->name, err);
		free(vs);
		msa_spec_free(s);
	}
}

/* A compile error in a template points at the template's own line. */
static void check_error_lines(const msa_spec *s)
{
	msa_variant v;
	char *src, err[8192];
	size_t len;
	msa_compiled c;
	msa_variant_default(&v, MSA_K_DENSE_FWD, &s->layers[0], "sm_90a", 1);
	v.tune[1] = 40;	/* block_n not a multiple of 16: a static_assert fires */
	msa_emit(&v, &src, &len, err, sizeof err);
	ok(msa_nvrtc_compile(src, len, "bad", "sm_90a", &c, err, sizeof err) == MSA_ECOMPILE,
	   "a bad variant fails to compile");
	like(err, "templates/dense_fwd.cu(", "the error names the template file and line");
	msa_compiled_clear(&c);
	free(src);
}

static int count_compiles(const msa_spec *s)
{
	int total = 0;
	for (int li = 0; li < s->nlayers; li++)
		for (int a = 0; a < 2; a++) {
			msa_variant *vs;
			int n = 0;
			char err[256];
			msa_variants_for_layer(&s->layers[li], a ? "sm_90a" : "sm_80", &vs, &n, err, sizeof err);
			free(vs);
			total += n;
		}
	return total;
}

/* Which layers and archs the sm_90a families serve: the rules that decide
 * between them and the portable kernels. */
static void check_hopper_support(void)
{
	static const struct {
		const char *text;
		int dense90, kvo90, index90;
	} cases[] = {
		{"layer { name = 'm3', heads = { q = 64, kv = 4 }, head_dim = 128 }", 1, 1, 1},
		{"layer { name = 'b64', heads = { q = 8, kv = 2 }, head_dim = 64, block = 64, topk = 4 }", 1, 0, 0},
		{"layer { name = 'f8', heads = { q = 64, kv = 4 }, head_dim = 128, "
		 "dtype = { q = 'fp8_e4m3', kv = 'fp8_e4m3', index = 'fp8_e4m3', out = 'bf16' } }", 0, 0, 1},
		{"layer { name = 'i8', heads = { q = 64, kv = 4 }, head_dim = 128, index_dim = 64, "
		 "dtype = { q = 'bf16', kv = 'bf16', index = 'fp8_e4m3', out = 'bf16' } }", 1, 1, 0},
		{"layer { name = 'g1', heads = { q = 8, kv = 8 }, head_dim = 64, index_dim = 64 }", 1, 1, 1},
		{"layer { name = 'h3', heads = { q = 6, kv = 3 }, head_dim = 128 }", 1, 1, 0},
	};
	for (int i = 0; i < MSA_COUNT(cases); i++) {
		msa_spec *s = load(cases[i].text);
		const msa_layer *l = &s->layers[0];
		int d = msa_layer_supports_on(l, MSA_K_DENSE_FWD90, "sm_90a");
		int k = msa_layer_supports_on(l, MSA_K_SPARSE_KVO90, "sm_90a");
		int x = msa_layer_supports_on(l, MSA_K_INDEX_TOPK90, "sm_90a") &&
			msa_layer_supports_on(l, MSA_K_INDEX_SCORES90, "sm_90a");
		ok(d == cases[i].dense90 && k == cases[i].kvo90 && x == cases[i].index90,
		   "layer %s on sm_90a: dense90 %d kvo90 %d index90 %d", l->name, d, k, x);
		ok(!msa_layer_supports_on(l, MSA_K_DENSE_FWD90, "sm_80") &&
		   !msa_layer_supports_on(l, MSA_K_SPARSE_KVO90, "sm_80") &&
		   !msa_layer_supports_on(l, MSA_K_INDEX_TOPK90, "sm_89"),
		   "layer %s: no sm_90a kernel on sm_80 / sm_89", l->name);
		msa_spec_free(s);
	}
}

/* dense_fwd90's schedule: layers build both the default and the one long
 * requests take; a spec's own list replaces both. */
static void check_dense90_scheds(void)
{
	static const char *const texts[] = {
		"layer { name = 'c', heads = { q = 8, kv = 2 }, head_dim = 128 }",
		"layer { name = 'n', heads = { q = 8, kv = 2 }, head_dim = 128, causal = false }",
		"layer { name = 'p', heads = { q = 8, kv = 2 }, head_dim = 128, tune = { dense_fwd90 = { sched = { 1 } } } }",
	};
	static const char *const want[] = {"30", "30", "1"};
	for (int t = 0; t < 3; t++) {
		msa_spec *sp = load(texts[t]);
		msa_variant *vs;
		int n;
		char got[16] = "";
		if (msa_variants_for_layer(&sp->layers[0], "sm_90a", &vs, &n, NULL, 0) == MSA_OK) {
			for (int i = 0; i < n; i++)
				if (vs[i].kind == MSA_K_DENSE_FWD90 && strlen(got) < sizeof got - 1)
					got[strlen(got)] = (char)('0' + vs[i].tune[1]);
			free(vs);
		}
		is_string(got, want[t], "layer %s: dense_fwd90 schedules built", sp->layers[0].name);
		const msa_layer *l = &sp->layers[0];
		if (t == 0)
			ok(msa_dense90_sched(l, 1, 32768) == 0 && msa_dense90_sched(l, 1, 32767) == 3 &&
			   msa_dense90_sched(l, 0, 65536) == 0 && msa_dense90_sched(l, 0, 65535) == 3,
			   "long plans (32K causal, 64K not) take schedule 0, the rest 3");
		if (t == 2)
			ok(msa_dense90_sched(l, 1, 1 << 20) == 1 && msa_dense90_sched(l, 0, 100) == 1,
			   "a spec's schedule wins");
		msa_spec_free(sp);
	}
}

int main(void)
{
	msa_spec *s = load(tiny);
	plan(8 + 5 + 6 + 3 * count_compiles(s) + 2 + 12 + 5 + 3 * NWSPEC + 4);
	check_determinism(&s->layers[0]);
	check_variants(s);
	check_bad_tune();
	check_compiles(s);
	check_error_lines(s);
	check_hopper_support();
	check_dense90_scheds();
	check_register_split();
	check_index_consumers();
	msa_spec_free(s);
	return done_testing();
}

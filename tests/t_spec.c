/* t_spec.c - spec loading: the shipped specs, defaults, every class of bad
 * spec (message and line), and the sandbox's limits.  Runs from the repo
 * root; needs no GPU. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "tap.h"

#define NFIXED 192	/* checks besides one per shipped spec */

static char err[512];
static int last_rc;

/* Loads text as "x.lua"; NULL on failure (err, last_rc say why). */
static msa_spec *load(const char *text)
{
	msa_spec *s = (msa_spec *)1;
	err[0] = '\0';
	last_rc = msa_spec_load_string("x.lua", text, strlen(text), &s, err, sizeof err);
	if (last_rc != MSA_OK && s != NULL) {
		diag("failed load left *out = %p", (void *)s);
		s = NULL;
	}
	return s;
}

/* One check: text fails as a spec error whose message contains want. */
static void bad_at(const char *text, const char *want, int line, const char *what)
{
	msa_spec *s = load(text);
	like_at(s == NULL && last_rc == MSA_ESPEC ? err : "(loaded, or not MSA_ESPEC)", want,
		__FILE__, line, "%s", what);
	msa_spec_free(s);
}
#define bad(text, want, what) bad_at(text, want, __LINE__, what)

/* Two checks: as bad(), and it took under 5 s. */
static void bad_fast_at(const char *text, const char *want, int line, const char *what)
{
	double t0 = msa_now_ms();
	bad_at(text, want, line, what);
	ok_at(msa_now_ms() - t0 < 5000, __FILE__, line, "%s: stopped in %.0f ms", what, msa_now_ms() - t0);
}
#define bad_fast(text, want, what) bad_fast_at(text, want, __LINE__, what)

/* A valid layer, for specs that need one after their trick. */
#define GOOD "layer{ name = \"ok\", heads = { q = 4, kv = 2 }, head_dim = 64 }\n"
#define LAYER_FIELDS "name, heads, head_dim, index_dim, block, topk, local_blocks, " \
	"sink_blocks, dtype, causal, scale, arch, tune"

static int is_lua(const char *name)
{
	size_t n = strlen(name);
	return n > 4 && !strcmp(name + n - 4, ".lua");
}

static int count_specs(void)
{
	int n = 0;
	DIR *d = opendir("specs");
	struct dirent *e;
	if (!d)
		bail("cannot open specs/ (run from the repo root)");
	while ((e = readdir(d)))
		n += is_lua(e->d_name);
	closedir(d);
	return n;
}

static void test_shipped(void)
{
	DIR *d = opendir("specs");
	struct dirent *e;
	char path[512];
	msa_spec *s;
	int rc;

	while (d && (e = readdir(d))) {
		if (!is_lua(e->d_name))
			continue;
		msa_fmt(path, sizeof path, "specs/%s", e->d_name);
		rc = msa_spec_load(path, &s, err, sizeof err);
		ok(rc == MSA_OK && s && s->nlayers > 0, "%s loads", path);
		if (rc != MSA_OK)
			diag("%s", err);
		msa_spec_free(s);
	}
	if (d)
		closedir(d);
}

static const msa_layer *load_one(const char *path, msa_spec **s)
{
	if (msa_spec_load(path, s, err, sizeof err) != MSA_OK || (*s)->nlayers != 1) {
		diag("%s: %s", path, err);
		bail("cannot load %s", path);
	}
	return &(*s)->layers[0];
}

static void test_m3(void)
{
	msa_spec *s;
	const msa_layer *l = load_one("specs/minimax-m3.lua", &s);

	is_string(s->path, "specs/minimax-m3.lua", "spec path");
	is_string(l->name, "minimax-m3", "m3 name");
	is_string(l->file, "specs/minimax-m3.lua", "m3 file");
	is_int(l->line, 4, "m3 line of layer{}");
	is_int(l->heads_q, 64, "m3 heads.q");
	is_int(l->heads_kv, 4, "m3 heads.kv");
	is_int(l->group, 16, "m3 group = 16");
	is_int(l->index_heads, 4, "m3 index heads");
	is_int(l->head_dim, 128, "m3 head_dim");
	is_int(l->index_dim, 128, "m3 index_dim");
	is_int(l->block, 128, "m3 block");
	is_int(l->topk, 16, "m3 topk");
	is_int(l->local_blocks, 1, "m3 local_blocks");
	is_int(l->sink_blocks, 0, "m3 sink_blocks");
	ok(l->dtype_q == MSA_DT_BF16 && l->dtype_kv == MSA_DT_BF16 &&
	   l->dtype_index == MSA_DT_BF16 && l->dtype_out == MSA_DT_BF16, "m3 dtypes all bf16");
	is_int(l->causal, 1, "m3 causal");
	ok(fabs(l->scale - 1 / sqrt(128.0)) < 1e-12, "m3 scale = 1/sqrt(128)");
	is_int(l->narch, 2, "m3 two archs");
	is_string(l->arch[0], "sm_90a", "m3 arch[0]");
	is_string(l->arch[1], "sm_80", "m3 arch[1]");
	is_int(l->ntune, 1, "m3 one tuned kernel");
	is_string(l->tune[0].kernel, "dense_fwd", "m3 tune kernel");
	is_int(l->tune[0].nparams, 2, "m3 two tune params");
	is_string(l->tune[0].params[0].name, "block_m", "m3 params sorted: block_m");
	ok(l->tune[0].params[0].nvalues == 2 && l->tune[0].params[0].values[0] == 64 &&
	   l->tune[0].params[0].values[1] == 128, "m3 block_m = {64, 128}");
	is_string(l->tune[0].params[1].name, "block_n", "m3 then block_n");
	ok(l->tune[0].params[1].nvalues == 2 && l->tune[0].params[1].values[0] == 32 &&
	   l->tune[0].params[1].values[1] == 64, "m3 block_n = {32, 64}");
	msa_spec_free(s);
}

static void test_variants(void)
{
	static const struct {
		const char *path, *name;
		int q, kv, group;
	} tp[] = {{"specs/minimax-m3-tp2.lua", "minimax-m3-tp2", 32, 2, 16},
		  {"specs/minimax-m3-tp4.lua", "minimax-m3-tp4", 16, 1, 16},
		  {"specs/gqa8.lua", "gqa8", 32, 4, 8}};
	const msa_layer *l;
	msa_spec *s;

	for (int i = 0; i < MSA_COUNT(tp); i++) {
		l = load_one(tp[i].path, &s);
		is_string(l->name, tp[i].name, "%s name", tp[i].path);
		ok(l->heads_q == tp[i].q && l->heads_kv == tp[i].kv && l->group == tp[i].group &&
		   l->index_heads == tp[i].kv, "%s heads %d/%d, group %d", tp[i].path,
		   tp[i].q, tp[i].kv, tp[i].group);
		msa_spec_free(s);
	}
	l = load_one("specs/gqa8.lua", &s);
	ok(l->block == 64 && l->topk == 32 && l->narch == 1, "gqa8 block 64, topk 32, one arch");
	msa_spec_free(s);

	l = load_one("specs/minimax-m3-fp8.lua", &s);
	ok(l->dtype_q == MSA_DT_FP8_E4M3 && l->dtype_kv == MSA_DT_FP8_E4M3 &&
	   l->dtype_index == MSA_DT_FP8_E4M3, "fp8: q, kv, index fp8_e4m3");
	ok(l->dtype_out == MSA_DT_BF16 && l->group == 16, "fp8: out bf16, group 16");
	ok(l->narch == 1 && !strcmp(l->arch[0], "sm_90a"), "fp8: arch sm_90a");
	msa_spec_free(s);

	l = load_one("specs/tiny.lua", &s);
	ok(l->heads_q == 4 && l->heads_kv == 2 && l->head_dim == 64 && l->index_dim == 64 &&
	   l->block == 64 && l->topk == 4 && l->ntune == 0 && l->narch == 2, "tiny fields");
	msa_spec_free(s);

	if (msa_spec_load("specs/sweep-groups.lua", &s, err, sizeof err) != MSA_OK)
		bail("sweep-groups: %s", err);
	is_int(s->nlayers, 5, "sweep makes 5 layers");
	is_string(s->layers[4].name, "g16", "sweep's last layer is g16");
	ok(s->layers[0].group == 1 && s->layers[4].group == 16 && s->layers[4].heads_q == 64 &&
	   s->layers[2].heads_kv == 4, "sweep groups 1 .. 16 over 4 KV heads");
	is_int(s->layers[3].line, s->layers[0].line, "sweep layers share the call line");
	msa_spec_free(s);
}

static void test_defaults(void)
{
	msa_spec *s = load("\n" GOOD);
	const msa_layer *l = s ? &s->layers[0] : NULL;

	if (!l)
		bail("minimal spec: %s", err);
	is_int(l->line, 2, "line of the layer{} call");
	is_string(l->file, "x.lua", "file is the chunk name");
	ok(l->index_heads == 2 && l->group == 2, "heads.index defaults to kv");
	is_int(l->index_dim, 64, "index_dim defaults to head_dim");
	ok(l->block == 128 && l->topk == 16, "block 128, topk 16 by default");
	ok(l->local_blocks == 1 && l->sink_blocks == 0, "local 1, sink 0 by default");
	ok(l->dtype_q == MSA_DT_BF16 && l->dtype_kv == MSA_DT_BF16 &&
	   l->dtype_index == MSA_DT_BF16 && l->dtype_out == MSA_DT_BF16, "dtypes bf16 by default");
	ok(l->causal == 1 && l->scale == 0.125, "causal, scale 1/sqrt(64) by default");
	ok(l->narch == 1 && !strcmp(l->arch[0], "sm_90a") && l->ntune == 0, "arch sm_90a, no tune");
	msa_spec_free(s);

	s = load("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, dtype = { q = \"fp8_e4m3\" } }");
	ok(s && s->layers[0].dtype_kv == MSA_DT_BF16 && s->layers[0].dtype_index == MSA_DT_FP8_E4M3 &&
	   s->layers[0].dtype_out == MSA_DT_BF16, "fp8 q: kv bf16, index follows q, out bf16");
	msa_spec_free(s);
	s = load("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, dtype = { q = \"fp16\", kv = \"fp8_e4m3\" } }");
	ok(s && s->layers[0].dtype_index == MSA_DT_FP16 && s->layers[0].dtype_out == MSA_DT_FP16 &&
	   s->layers[0].dtype_kv == MSA_DT_FP8_E4M3, "fp16 q: index and out follow q");
	msa_spec_free(s);
	s = load("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, dtype = \"fp16\" }");
	ok(s && s->layers[0].dtype_q == MSA_DT_FP16 && s->layers[0].dtype_kv == MSA_DT_FP16 &&
	   s->layers[0].dtype_index == MSA_DT_FP16 && s->layers[0].dtype_out == MSA_DT_FP16,
	   "dtype = \"fp16\" sets all four");
	msa_spec_free(s);
	s = load("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, dtype = \"fp8_e4m3\" }");
	ok(s && s->layers[0].dtype_q == MSA_DT_FP8_E4M3 && s->layers[0].dtype_index == MSA_DT_FP8_E4M3 &&
	   s->layers[0].dtype_out == MSA_DT_BF16, "dtype = \"fp8_e4m3\": out bf16");
	msa_spec_free(s);
	s = load("layer{ name = \"a\", heads = { q = 2^3, kv = 2 }, head_dim = 64.0, causal = false, scale = 0.5, arch = \"sm_86\" }");
	ok(s && s->layers[0].heads_q == 8 && s->layers[0].head_dim == 64 && !s->layers[0].causal &&
	   s->layers[0].scale == 0.5 && s->layers[0].narch == 1 && !strcmp(s->layers[0].arch[0], "sm_86"),
	   "integral floats, causal = false, scale, arch as a string");
	msa_spec_free(s);
}

static void test_computed(void)
{
	msa_spec *s = load("local function mk(name, g)\n"
			   "\tlayer{ name = name, heads = { q = 4 * g, kv = 4 }, head_dim = 64,\n"
			   "\t\ttune = { zeta = { b = 1, a = { 2, 1 } }, alpha = { x = 3 } } }\n"
			   "end\n"
			   "mk(\"one\", 1)\n"
			   "mk(\"two\", 2)\n");
	ok(s && s->nlayers == 2 && !strcmp(s->layers[1].name, "two") && s->layers[1].group == 2,
	   "layers from a helper function");
	ok(s && s->layers[0].line == 2, "layer line is the call inside the helper");
	ok(s && !strcmp(s->layers[0].tune[0].kernel, "alpha") && !strcmp(s->layers[0].tune[1].kernel, "zeta"),
	   "tune kernels sorted by name");
	ok(s && !strcmp(s->layers[0].tune[1].params[0].name, "a") &&
	   s->layers[0].tune[1].params[0].values[0] == 2 && s->layers[0].tune[1].params[0].values[1] == 1 &&
	   s->layers[0].tune[1].params[1].nvalues == 1, "params sorted, values kept in order");
	msa_spec_free(s);

	s = load("print(\"t_spec: print goes to stderr\")\n" GOOD);
	ok(s != NULL, "print is allowed");
	msa_spec_free(s);
	s = load("local s = string.rep(\"\", 2^62)\nlocal t = {}\ntable.insert(t, 1)\ntable.insert(t, 1, 0)\n"
		 "table.remove(t, 1)\ntable.move({1, 2}, 1, 2, 2)\n" GOOD);
	ok(s != NULL, "string.rep(\"\", 2^62), table.insert/remove/move work");
	if (!s)
		diag("%s", err);
	msa_spec_free(s);
	s = load("local t = setmetatable({}, {})\ntable.insert(t, 5)\ntable.remove(t)\n" GOOD);
	ok(s != NULL, "appending to a table with a metatable works");
	msa_spec_free(s);
	s = load("local k = (\"x\"):rep(1000)\nfor i = 1, 6 do local s = k:rep(20000) end\n" GOOD);
	ok(s != NULL, "garbage near the memory cap is collected, not an error");
	if (!s)
		diag("%s", err);
	msa_spec_free(s);
}

static void test_syntax_and_fields(void)
{
	bad("layer{\n\tname = \"a\",\n\theads = { q = 4 kv = 2 },\n}\n", "x.lua:3: '}' expected",
	    "syntax error");
	bad("local x = nil\nlocal y = x + 1\n", "x.lua:2: attempt to perform arithmetic on a nil value",
	    "runtime error");
	bad("\nerror(\"boom\")\n", "x.lua:2: boom", "error()");
	bad("error(\"plain\", 0)\n", "x.lua: plain", "error() without position");
	bad("error({})\n", "x.lua: (error object is a table value)", "error with a table");
	bad("layer{\n\tname = \"a\",\n\theads = { q = 4, kv = 2 },\n\thead_dim = 64,\n\ttopk_ = 4,\n}\n",
	    "x.lua:5: topk_ is not a field (expected " LAYER_FIELDS ")", "unknown field");
	bad("layer{\n\tname = \"a\",\n\theads = { qq = 4, kv = 2 },\n\thead_dim = 64,\n}\n",
	    "x.lua:3: heads.qq is not a field (expected q, kv, index)", "unknown heads field");
	bad("layer{\n\tname = \"a\",\n\theads = { q = 4, kv = 2 },\n\thead_dim = 64,\n\tdtype = {\n\t\toutt = \"bf16\" },\n}\n",
	    "x.lua:6: dtype.outt is not a field (expected q, kv, index, out)", "unknown dtype field");
	bad("layer{ \"a\", name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64 }",
	    "x.lua:1: [1] is not a field", "positional entry");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, zz = 1, aa = 2 }",
	    "x.lua:1: aa is not a field", "of several unknown fields, the first by name");
	bad("layer{\n\tname = \"a\",\n\theads = { q = 4, kv = 2 },\n\thead_dim = \"128\",\n}\n",
	    "x.lua:4: head_dim = \"128\" must be an integer", "string for an integer");
	bad("layer{\n\tname = \"a\",\n\theads = { q = 4, kv = 2 },\n\thead_dim = 64.5,\n}\n",
	    "x.lua:4: head_dim = 64.5 must be an integer", "non-integer");
	bad("layer{\n\tname = \"a\",\n\theads = 64,\n\thead_dim = 64,\n}\n",
	    "x.lua:3: heads = 64 must be a table", "heads not a table");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64,\n causal = 1 }",
	    "x.lua:2: causal = 1 must be a boolean", "causal not a boolean");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, scale = \"big\" }",
	    "x.lua:1: scale = \"big\" must be a number", "scale not a number");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, scale = 0 }",
	    "scale = 0 is out of range (a finite number > 0)", "scale 0");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, scale = 1/0 }",
	    "scale = inf is out of range", "scale inf");
	bad("layer{ name = 5, heads = { q = 4, kv = 2 }, head_dim = 64 }",
	    "x.lua:1: name = 5 must be a string", "name not a string");
	bad("layer{ name = \"a b\", heads = { q = 4, kv = 2 }, head_dim = 64 }",
	    "name = \"a b\" must be 1 to 63 characters of [A-Za-z0-9_.-]", "name with a space");
	bad("layer{ name = string.rep(\"n\", 64), heads = { q = 4, kv = 2 }, head_dim = 64 }",
	    "must be 1 to 63 characters", "name too long");
	bad("layer{ name = \"\", heads = { q = 4, kv = 2 }, head_dim = 64 }",
	    "name = \"\" must be 1 to 63", "empty name");
	bad("layer(\"x\")", "x.lua:1: layer{...} takes one table, got string", "layer with a string");
}

static void test_ranges(void)
{
	bad("layer{\n\tname = \"a\",\n\theads = { q = 4, kv = 2 },\n\thead_dim = 96,\n}\n",
	    "x.lua:4: head_dim = 96 is out of range (64 or 128)", "head_dim 96");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, index_dim = 256 }",
	    "index_dim = 256 is out of range (64 or 128)", "index_dim 256");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, block = 32 }",
	    "block = 32 is out of range (64 or 128)", "block 32");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, topk = 65 }",
	    "topk = 65 is out of range (1..64)", "topk 65");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, topk = 0 }",
	    "topk = 0 is out of range (1..64)", "topk 0");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, local_blocks = 2 }",
	    "local_blocks = 2 is out of range (0 or 1)", "local_blocks 2");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, sink_blocks = -1 }",
	    "sink_blocks = -1 is out of range (0..64)", "sink_blocks -1");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, topk = 4,\n\tsink_blocks = 4 }",
	    "x.lua:2: local_blocks + sink_blocks = 5 exceeds topk = 4", "local + sink > topk");
	bad("layer{ name = \"a\", heads = { q = 0, kv = 2 }, head_dim = 64 }",
	    "heads.q = 0 is out of range (1..1024)", "heads.q 0");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 2^40 }",
	    "head_dim = 1099511627776 is out of range (64 or 128)", "head_dim 2^40");
}

static void test_required(void)
{
	bad("layer{\n\theads = { q = 4, kv = 2 },\n\thead_dim = 64,\n}\n", "x.lua:1: name is required",
	    "missing name");
	bad("layer{\n\tname = \"a\",\n\thead_dim = 64,\n}\n", "x.lua:1: heads is required",
	    "missing heads");
	bad("layer{\n\tname = \"a\",\n\theads = { kv = 2 },\n\thead_dim = 64,\n}\n",
	    "x.lua:3: heads.q is required", "missing heads.q");
	bad("layer{ name = \"a\", heads = { q = 4 }, head_dim = 64 }", "x.lua:1: heads.kv is required",
	    "missing heads.kv");
	bad("layer{\n\tname = \"a\",\n\theads = { q = 4, kv = 2 },\n}\n", "x.lua:1: head_dim is required",
	    "missing head_dim");
	bad("layer{\n\tname = \"a\",\n\theads = { q = 48, kv = 5 },\n\thead_dim = 128,\n}\n",
	    "x.lua:3: heads.q = 48 is not a multiple of heads.kv = 5", "q % kv");
	bad("layer{\n\tname = \"a\",\n\theads = {\n\t\tq = 16,\n\t\tkv = 4,\n\t\tindex = 3,\n\t},\n\thead_dim = 128,\n}\n",
	    "x.lua:6: heads.index = 3 must equal heads.kv = 4 (one index head per KV group)",
	    "index heads != kv");
	bad("layer{ -- heads = { q = 1 }\n\tname = \"heads = { q = 2 }\" and \"a\",\n\t--[[ heads = {\n q = 3} ]]\n"
	    "\theads = { q = 48, kv = 5 },\n\thead_dim = 128,\n}\n",
	    "x.lua:5: heads.q = 48", "comments and strings do not fool the line finder");
	bad("for _, g in ipairs({ 1, 3 }) do\n\tlayer{\n\t\tname = \"g\" .. g,\n\t\theads = { q = 4 * g, kv = 8 },\n"
	    "\t\thead_dim = 64,\n\t}\nend\n",
	    "x.lua:4: heads.q = 4 is not a multiple of heads.kv = 8", "error line inside a sweep");
}

static void test_dtypes_arch(void)
{
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, dtype = { q = \"fp32\" } }",
	    "x.lua:1: dtype.q = \"fp32\" is not a dtype (expected bf16, fp16, fp8_e4m3)", "bad dtype.q");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, dtype = \"fp32\" }",
	    "dtype = \"fp32\" is not a dtype", "bad dtype string");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, dtype = 16 }",
	    "dtype = 16 must be a dtype name or a table", "dtype a number");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, dtype = { kv = 8 } }",
	    "dtype.kv = 8 must be a string", "dtype.kv a number");
	bad("layer{\n\tname = \"a\",\n\theads = { q = 4, kv = 2 },\n\thead_dim = 64,\n\tdtype = { q = \"fp8_e4m3\",\n\t\tout = \"fp8_e4m3\" },\n}\n",
	    "x.lua:6: dtype.out = fp8_e4m3 is not supported (use bf16 or fp16)", "fp8 output");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, arch = \"sm_70\" }",
	    "arch = \"sm_70\" is not a supported arch (expected sm_80, sm_86, sm_89, sm_90a)", "bad arch");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64,\n arch = { \"sm_80\", \"sm_75\" } }",
	    "x.lua:2: arch[2] = \"sm_75\" is not a supported arch", "bad arch in a list");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, arch = { \"sm_80\", \"sm_80\" } }",
	    "arch[2] = \"sm_80\" is listed twice", "duplicate arch");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, arch = {} }",
	    "arch = {} lists no arch", "empty arch list");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, arch = 90 }",
	    "arch = 90 must be an arch name or a list of them", "arch a number");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, arch = { \"sm_80\", x = 1 } }",
	    "arch = {...} must be a list of arch names", "arch with a non-list key");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64,\n"
	    " arch = { \"sm_80\", \"sm_86\", \"sm_89\", \"sm_90a\", \"sm_80\" } }",
	    "arch lists 5 archs (at most 4)", "too many archs");
	bad("layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64 }\n"
	    "layer{ name = \"b\", heads = { q = 4, kv = 2 }, head_dim = 64 }\n"
	    "layer{\n\tname = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64 }\n",
	    "x.lua:4: name = \"a\" is used twice (first at line 1)", "duplicate layer name");
	bad("local x = 1\n", "x.lua: declares no layer; call layer{...}", "no layer");
	bad("", "x.lua: declares no layer; call layer{...}", "empty spec");
	bad("for i = 1, 1025 do layer{ name = \"l\" .. i, heads = { q = 4, kv = 2 }, head_dim = 64 } end",
	    "too many layers (at most 1024)", "too many layers");
	bad("pcall(layer, { name = \"a\", heads = { q = 3, kv = 2 }, head_dim = 64 })\n" GOOD,
	    "x.lua:1: heads.q = 3 is not a multiple of heads.kv = 2", "a pcall'd bad layer still fails");
}

#define TUNE(t) "layer{ name = \"a\", heads = { q = 4, kv = 2 }, head_dim = 64, tune = " t " }"

static void test_tune(void)
{
	bad(TUNE("5"), "tune = 5 must be a table {kernel = {param = {values}}}", "tune a number");
	bad(TUNE("{ dense_fwd = 5 }"), "tune.dense_fwd = 5 must be a table {param = {values}}",
	    "tune kernel not a table");
	bad(TUNE("{ dense_fwd = { block_m = {} } }"), "tune.dense_fwd.block_m = {} lists no value",
	    "empty value list");
	bad(TUNE("{ dense_fwd = { block_m = { 64, 0 } } }"),
	    "tune.dense_fwd.block_m[2] = 0 is out of range (>= 1)", "tune value 0");
	bad(TUNE("{ dense_fwd = { block_m = { \"64\" } } }"),
	    "tune.dense_fwd.block_m[1] = \"64\" must be an integer", "tune value a string");
	bad(TUNE("{ dense_fwd = { block_m = 64.5 } }"), "tune.dense_fwd.block_m = 64.5 must be an integer",
	    "tune value not an integer");
	bad(TUNE("{ dense_fwd = { block_m = { 64, 64 } } }"),
	    "tune.dense_fwd.block_m[2] = 64 is listed twice", "tune value twice");
	bad(TUNE("{ dense_fwd = { block_m = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17 } } }"),
	    "tune.dense_fwd.block_m lists 17 values (at most 16)", "too many tune values");
	bad(TUNE("{ k1 = {}, k2 = {}, k3 = {}, k4 = {}, k5 = {}, k6 = {}, k7 = {}, k8 = {}, k9 = {} }"),
	    "tune lists more than 8 kernels", "too many tuned kernels");
	bad(TUNE("{ dense_fwd = { p1 = 1, p2 = 1, p3 = 1, p4 = 1, p5 = 1, p6 = 1, p7 = 1, p8 = 1, p9 = 1 } }"),
	    "tune.dense_fwd lists more than 8 parameters", "too many tune params");
	bad(TUNE("{ a234567890123456789012345678901x = {} }"),
	    "tune.a234567890123456789012345678901x: a kernel name must be 1 to 31 characters",
	    "kernel name too long");
	bad(TUNE("{ [1] = {} }"), "tune[1] is not a kernel name", "tune kernel key not a string");
	bad(TUNE("{ dense_fwd = { [1] = 64 } }"), "tune.dense_fwd[1] is not a parameter name",
	    "tune param key not a string");
	bad(TUNE("{ dense_fwd = { block_m = { x = 1 } } }"),
	    "tune.dense_fwd.block_m = {...} must be an integer or a list of integers", "tune values not a list");
	bad("layer{\n\tname = \"a\",\n\theads = { q = 4, kv = 2 },\n\thead_dim = 64,\n\ttune = {\n"
	    "\t\tdense_fwd = {\n\t\t\tblock_n = { 64 },\n\t\t\tblock_m = { 64, -1 },\n\t\t},\n\t},\n}\n",
	    "x.lua:8: tune.dense_fwd.block_m[2] = -1 is out of range (>= 1)", "tune error line");
}

static void test_sandbox(void)
{
	bad("local f = io.open(\"/etc/passwd\")\n", "x.lua:1: attempt to index a nil value (global 'io')",
	    "no io");
	bad("os.execute(\"true\")\n", "x.lua:1: attempt to index a nil value (global 'os')", "no os");
	bad("require(\"os\")\n", "x.lua:1: attempt to call a nil value (global 'require')", "no require");
	bad("dofile(\"/etc/passwd\")\n", "attempt to call a nil value (global 'dofile')", "no dofile");
	bad("loadfile(\"/etc/passwd\")\n", "attempt to call a nil value (global 'loadfile')", "no loadfile");
	bad("load(\"return 1\")\n", "attempt to call a nil value (global 'load')", "no load");
	bad("collectgarbage()\n", "attempt to call a nil value (global 'collectgarbage')", "no collectgarbage");
	bad("string.dump(function() end)\n", "attempt to call a nil value (field 'dump')", "no string.dump");
	bad("getmetatable(\"\").__index.dump(print)\n", "attempt to call a nil value (field 'dump')",
	    "no dump through the string metatable");
	bad("string.find(\"aaa\", \"a-a-b\")\n", "attempt to call a nil value (field 'find')",
	    "no pattern matching");
	bad("debug.getinfo(1)\n", "(global 'debug')", "no debug");
	bad("package.loaded.os.exit()\n", "(global 'package')", "no package");
	bad("\x1bLuaT\x00\x19\x93\r\n", "x.lua: attempt to load a binary chunk (mode is 't')",
	    "binary chunk refused");
	bad("setmetatable({}, { __gc = function() while true do end end })\n" GOOD,
	    "x.lua:1: __gc metamethods are not allowed in specs", "no finalizers");
	bad("local t = setmetatable({}, { __len = function() return 1 << 50 end })\ntable.insert(t, 1, 0)\n",
	    "x.lua:2: table.insert/remove at a position need a table without a metatable",
	    "positional insert refuses a lying __len");
}

static void test_limits(void)
{
	msa_spec *s;
	double t0;

	bad_fast("while true do end\n", "x.lua:1: instruction budget exceeded (infinite loop?)",
		 "infinite loop");
	bad_fast("while true do pcall(function() while true do end end) end\n" GOOD,
		 "instruction budget exceeded (infinite loop?)", "infinite loop under pcall");
	bad_fast("xpcall(error, function() while true do end end)\n" GOOD,
		 "attempt to call a nil value (global 'xpcall')", "no xpcall (its handler runs unhooked)");
	bad_fast("do local x <close> = setmetatable({}, { __close = function() while true do end end }) end\n",
		 "instruction budget exceeded", "infinite loop in __close");
	bad_fast("table.move({}, 1, 1 << 62, 2)\n", "x.lua:1: instruction budget exceeded",
		 "table.move over 2^62 nils");
	bad_fast("local t = {}\nfor i = 0, 40 do t[1 << i] = true end\nfor i = 1, 1e6 do table.insert(t, 1, true) end\n",
		 "instruction budget exceeded", "table.insert shifting a long border");
	bad_fast("local t = {} for i = 1, 1e9 do t[i] = string.rep(\"x\", 1e6) end\n",
		 "x.lua: memory limit (64 MiB) exceeded", "memory bomb: table of strings");
	bad_fast("local s = string.rep(\"x\", 2^40)\n", "x.lua: memory limit (64 MiB) exceeded",
		 "memory bomb: string.rep 2^40");
	bad_fast("local s = getmetatable(\"\").__index.rep(\"x\", 2^40)\n", "memory limit (64 MiB) exceeded",
		 "memory bomb through the string metatable");
	bad_fast("pcall(string.rep, \"x\", 2^40)\n" GOOD, "memory limit (64 MiB) exceeded",
		 "a pcall'd memory error still fails");
	bad_fast("local s = \"x\" for i = 1, 40 do s = s .. s end\n", "memory limit (64 MiB) exceeded",
		 "memory bomb: doubling a string");
	bad_fast("local s = (\"x\"):rep(2^30)\n", "x.lua: memory limit (64 MiB) exceeded",
		 "memory bomb: string.rep 2^30");
	t0 = msa_now_ms();
	s = load("local function f() return 1 + f() end\nf()\n");
	ok(!s && (strstr(err, "x.lua:1: stack overflow") || strstr(err, "x.lua: memory limit")),
	   "deep recursion fails cleanly (%s)", err);
	ok(msa_now_ms() - t0 < 5000, "deep recursion: stopped in %.0f ms", msa_now_ms() - t0);
}

static void test_api(void)
{
	msa_spec *s = (msa_spec *)1;
	char small[8], path[] = "/tmp/t_spec_XXXXXX";
	const char *text = "layer{\n\tname = \"a\",\n\theads = { q = 48, kv = 5 },\n\thead_dim = 128,\n}\n";
	int fd;

	is_int(msa_spec_load(NULL, &s, err, sizeof err), MSA_EINVAL, "load(NULL path)");
	ok(s == NULL, "*out is NULL after a failure");
	is_int(msa_spec_load("specs/tiny.lua", NULL, err, sizeof err), MSA_EINVAL, "load(NULL out)");
	is_int(msa_spec_load_string(NULL, "", 0, &s, err, sizeof err), MSA_EINVAL, "load_string(NULL name)");
	is_int(msa_spec_load_string("x.lua", NULL, 0, &s, err, sizeof err), MSA_EINVAL,
	       "load_string(NULL text)");
	is_int(msa_spec_load_string("x.lua", "", 0, NULL, NULL, 0), MSA_EINVAL,
	       "load_string(NULL out, NULL err)");
	is_int(msa_spec_load_string("x.lua", "error()", 7, &s, NULL, 0), MSA_ESPEC, "bad spec, NULL err");
	is_int(msa_spec_load_string("x.lua", "error()", 7, &s, small, sizeof small), MSA_ESPEC,
	       "bad spec, small err");
	is_string(small, "x.lua: ", "the message is cut to fit");
	msa_spec_free(NULL);
	ok(1, "msa_spec_free(NULL)");
	is_int(msa_spec_load("specs/no-such.lua", &s, err, sizeof err), MSA_EIO, "missing file");
	is_string(err, "specs/no-such.lua: cannot read spec file", "missing file message");

	fd = mkstemp(path);
	if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
		bail("cannot write %s", path);
	close(fd);
	msa_spec_load(path, &s, err, sizeof err);
	ok(!strncmp(err, path, strlen(path)) && !strncmp(err + strlen(path), ":3: heads.q = 48", 16),
	   "file errors say path:line: (%s)", err);
	unlink(path);
}

int main(void)
{
	plan(NFIXED + count_specs());
	ok(count_specs() >= 7, "the shipped specs are there");
	test_shipped();
	test_m3();
	test_variants();
	test_defaults();
	test_computed();
	test_syntax_and_fields();
	test_ranges();
	test_required();
	test_dtypes_arch();
	test_tune();
	test_sandbox();
	test_limits();
	test_api();
	return done_testing();
}

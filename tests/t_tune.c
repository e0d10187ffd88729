/* t_tune.c - tuning records without a GPU: format and parse, deterministic
 * picks, nearest-bucket lookup, records of another GPU or generator ignored,
 * corrupt records ignored, the report plot. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "tap.h"
#include "tune.h"

static msa_tune_rec rec3(double a, double b, double c)
{
	msa_tune_rec r = {0};
	r.ntune = 2;
	r.ncand = 3;
	double m[3] = {a, b, c};
	for (int i = 0; i < 3; i++) {
		r.cand[i].tune[0] = 64 << (i / 2);
		r.cand[i].tune[1] = 32 << (i % 2);
		r.cand[i].med = m[i];
		r.cand[i].p20 = m[i] * 0.98;
		r.cand[i].p80 = m[i] * 1.03;
	}
	return r;
}

static void check_format(void)
{
	msa_tune_rec r = rec3(2.0, 1.5, 1.6), back;
	char buf[1024];
	r.pick = msa_tune_pick(&r);
	is_int(r.pick, 1, "the fastest median wins");
	ok(msa_tune_format(&r, buf, sizeof buf) == MSA_OK, "format: %s", buf);
	ok(msa_tune_parse(buf, 2, &back) == MSA_OK && back.ncand == 3 && back.pick == 1 &&
	   back.cand[2].tune[1] == 32 && back.cand[1].med > 1.49 && back.cand[1].med < 1.51,
	   "parse gives the record back");
	ok(msa_tune_parse("pick=0;64,32:1/1/1;oops", 2, &back) != MSA_OK, "trailing garbage rejected");
	ok(msa_tune_parse("pick=5;64,32:1/1/1", 2, &back) != MSA_OK, "pick out of range rejected");
	ok(msa_tune_parse("", 2, &back) != MSA_OK, "empty value rejected");
}

/* Within 2% of the best is a tie broken by candidate order. */
static void check_picks(void)
{
	msa_tune_rec a = rec3(1.010, 1.000, 1.300), b = rec3(1.000, 1.015, 1.300);
	is_int(msa_tune_pick(&a), 0, "1.010 vs 1.000: within 2%%, the first candidate");
	is_int(msa_tune_pick(&b), 0, "noise the other way picks the same one");
	msa_tune_rec c = rec3(1.100, 1.000, 1.300);
	is_int(msa_tune_pick(&c), 1, "10%% slower is not a tie");
	msa_tune_rec d = rec3(0, 0, 0);
	is_int(msa_tune_pick(&d), -1, "no timing, no pick");
}

static void put(const char *db, const msa_variant *v, const char *what, int bucket, const char *gpu,
		int sms, msa_tune_rec *r)
{
	char key[700], val[1024], err[256];
	msa_tune_key(v, what, bucket, gpu, sms, key, sizeof key);
	r->pick = msa_tune_pick(r);
	msa_tune_format(r, val, sizeof val);
	if (msa_kvdb_put(db, key, val, err, sizeof err) != MSA_OK)
		bail("put: %s", err);
}

static void check_lookup(const char *dir)
{
	static const char text[] = "layer { name = 'a', heads = { q = 8, kv = 2 }, head_dim = 64 }";
	char err[256], db[1100];
	msa_spec *s;
	msa_ctx *ctx;
	msa_ctx_opts o = {0};
	msa_variant v;
	msa_tune_rec r8 = rec3(1, 2, 3), r17 = rec3(3, 2, 1), other = rec3(3, 1, 3), got;

	o.cache_dir = dir;
	if (msa_spec_load_string("a.lua", text, sizeof text - 1, &s, err, sizeof err) || msa_ctx_new(&o, &ctx))
		bail("setup: %s", err);
	msa_tune_db_path(ctx, db, sizeof db);
	msa_variant_default(&v, MSA_K_DENSE_FWD, &s->layers[0], "sm_90a", 1);
	ok(!msa_tune_lookup(ctx, &v, "tiles", 2, 8192, "GPU A", 132, &got), "no database: no record");
	put(db, &v, "tiles", 13, "GPU A", 132, &r8);
	put(db, &v, "tiles", 17, "GPU A", 132, &r17);
	put(db, &v, "tiles", 15, "GPU B", 132, &other);	/* another GPU */
	put(db, &v, "tiles", 15, "GPU A", 114, &other);	/* same name, other SM count */
	ok(msa_tune_lookup(ctx, &v, "tiles", 2, 8000, "GPU A", 132, &got) && got.pick == 0,
	   "8K finds the 2^13 record");
	ok(msa_tune_lookup(ctx, &v, "tiles", 2, 100000, "GPU A", 132, &got) && got.pick == 2,
	   "100K takes the nearest bucket, 2^17");
	ok(msa_tune_lookup(ctx, &v, "tiles", 2, 32768, "GPU A", 132, &got) && got.pick == 0,
	   "32K is as near to 2^13 as to 2^17: the smaller shape");
	ok(!msa_tune_lookup(ctx, &v, "tiles", 2, 8192, "GPU C", 132, &got), "another GPU has no record");
	ok(!msa_tune_lookup(ctx, &v, "form", 1, 8192, "GPU A", 132, &got), "another kind of record is not taken");
	msa_variant v2 = v;
	v2.causal = 0;
	ok(!msa_tune_lookup(ctx, &v2, "tiles", 2, 8192, "GPU A", 132, &got), "another variant family has no record");
	v2 = v;
	v2.tune[0] = 64;
	ok(msa_tune_lookup(ctx, &v2, "tiles", 2, 8192, "GPU A", 132, &got), "tunables do not name the record");

	/* a record with a mangled value is skipped, not fatal */
	char key[700];
	msa_tune_key(&v, "tiles", 20, "GPU A", 132, key, sizeof key);
	msa_kvdb_put(db, key, "pick=9;junk", err, sizeof err);
	ok(msa_tune_lookup(ctx, &v, "tiles", 2, 1 << 20, "GPU A", 132, &got) && got.pick == 2,
	   "a bad value at 2^20 is ignored; 2^17 serves 1M");
	setenv("MSAGEN_TUNED", "0", 1);
	msa_ctx *ctx2;
	msa_ctx_new(&o, &ctx2);
	ok(!msa_tune_lookup(ctx2, &v, "tiles", 2, 8192, "GPU A", 132, &got), "MSAGEN_TUNED=0 ignores records");
	unsetenv("MSAGEN_TUNED");
	msa_ctx_free(ctx2);
	msa_ctx_free(ctx);
	msa_spec_free(s);
}

static void check_plot(const char *dir)
{
	tune_group g[2] = {{3, 1, {2.0, 1.0, 1.5}}, {2, 0, {1.0, 3.0}}};
	char path[512], head[9] = {0};
	FILE *f;
	msa_fmt(path, sizeof path, "%s/plot.png", dir);
	ok(tune_plot_png(path, g, 2) == 0, "plot written");
	f = fopen(path, "rb");
	ok(f && fread(head, 1, 8, f) == 8 && memcmp(head, "\x89PNG\r\n\x1a\n", 8) == 0, "it is a PNG");
	if (f)
		fclose(f);
}

int main(void)
{
	char dir[] = "/tmp/msagen-tune-XXXXXX", cmd[300];
	plan(6 + 4 + 10 + 2);
	if (!mkdtemp(dir))
		bail("mkdtemp");
	check_format();
	check_picks();
	check_lookup(dir);
	check_plot(dir);
	msa_fmt(cmd, sizeof cmd, "rm -rf %s", dir);
	if (system(cmd) != 0)
		diag("could not remove %s", dir);
	return done_testing();
}

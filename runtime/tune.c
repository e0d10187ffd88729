/* tune.c - tuning records and the runtime's pick.
 *
 * A record's key names what the result depends on: the variant without its
 * tunables (family, dtypes, shape of the layer, arch), a shape bucket
 * (round(log2(tokens))), the GPU's name and multiprocessor count, the NVRTC
 * version and the generator version.  A record that no longer matches
 * (another GPU, a new generator) is simply never looked up.  The value
 * lists every candidate's median, p20 and p80 and the pick. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "internal.h"

void msa_tune_db_path(const msa_ctx *ctx, char *buf, size_t n)
{
	msa_fmt(buf, n, "%s/tune.db", ctx->cache_dir);
}

int msa_tune_bucket(long tokens)
{
	return (int)lround(log2((double)(tokens > 1 ? tokens : 1)));
}

/* The key without its bucket: "<base>|<what>|" ... "|<gpu>|sm<n>|nvrtc <v>|gen <v>". */
static void key_parts(const msa_variant *v, const char *what, char *pre, size_t npre, char *post,
		      size_t npost, const char *gpu, int sms)
{
	msa_variant base = *v;
	char name[256], ver[32];
	const msa_family *f = msa_family_get(v->kind);
	/* tunables do not name the record: they are what it chooses */
	for (int i = 0; f && i < f->ntunables; i++)
		base.tune[i] = 0;
	msa_variant_name(&base, name, sizeof name);
	msa_nvrtc_version_string(ver, sizeof ver);
	msa_fmt(pre, npre, "%s|%s|b", name, what);
	msa_fmt(post, npost, "|%s|sm%d|nvrtc %s|gen %s", gpu, sms, ver, MSAGEN_VERSION);
}

void msa_tune_key(const msa_variant *v, const char *what, int bucket, const char *gpu, int sms,
		  char *buf, size_t n)
{
	char pre[320], post[160];
	key_parts(v, what, pre, sizeof pre, post, sizeof post, gpu, sms);
	msa_fmt(buf, n, "%s%d%s", pre, bucket, post);
}

/* value: "pick=<i>;<t0>,<t1>,..:<median>/<p20>/<p80>;..." (candidate i). */
int msa_tune_format(const msa_tune_rec *r, char *buf, size_t n)
{
	size_t off;
	msa_fmt(buf, n, "pick=%d", r->pick);
	for (int c = 0; c < r->ncand; c++) {
		off = strlen(buf);
		msa_fmt(buf + off, n - off, ";");
		for (int i = 0; i < r->ntune; i++) {
			off = strlen(buf);
			msa_fmt(buf + off, n - off, "%s%d", i ? "," : "", r->cand[c].tune[i]);
		}
		off = strlen(buf);
		msa_fmt(buf + off, n - off, ":%.4f/%.4f/%.4f", r->cand[c].med, r->cand[c].p20, r->cand[c].p80);
	}
	return strlen(buf) + 1 < n ? MSA_OK : MSA_EINVAL;
}

int msa_tune_parse(const char *value, int ntune, msa_tune_rec *r)
{
	const char *p = value;
	int used;
	memset(r, 0, sizeof *r);
	r->ntune = ntune;
	if (sscanf(p, "pick=%d%n", &r->pick, &used) != 1)
		return MSA_EINVAL;
	p += used;
	while (*p == ';' && r->ncand < MSA_TUNE_MAX_CAND) {
		msa_tune_cand *c = &r->cand[r->ncand];
		p++;
		for (int i = 0; i < ntune; i++) {
			if (sscanf(p, i ? ",%d%n" : "%d%n", &c->tune[i], &used) != 1)
				return MSA_EINVAL;
			p += used;
		}
		if (sscanf(p, ":%lf/%lf/%lf%n", &c->med, &c->p20, &c->p80, &used) != 3)
			return MSA_EINVAL;
		p += used;
		r->ncand++;
	}
	return *p == '\0' && r->pick >= 0 && r->pick < r->ncand ? MSA_OK : MSA_EINVAL;
}

/* The fastest median wins, but anything within 2% of it counts as a tie
 * broken by candidate order, so two runs (or two ranks) whose timings
 * differ by noise choose the same variant. */
int msa_tune_pick(const msa_tune_rec *r)
{
	double best = INFINITY;
	for (int c = 0; c < r->ncand; c++)
		if (r->cand[c].med > 0 && r->cand[c].med < best)
			best = r->cand[c].med;
	for (int c = 0; c < r->ncand; c++)
		if (r->cand[c].med > 0 && r->cand[c].med <= best * 1.02)
			return c;
	return -1;
}

typedef struct near_walk {
	const char *pre, *post;
	int want, best_dist, best_bucket, ntune;
	msa_tune_rec rec;
	int found;
} near_walk;

static void near_visit(void *arg, const char *key, const char *value)
{
	near_walk *w = arg;
	size_t lp = strlen(w->pre), lq = strlen(w->post), lk = strlen(key);
	int bucket, used = 0;
	msa_tune_rec r;
	if (lk <= lp + lq || strncmp(key, w->pre, lp) != 0 || strcmp(key + lk - lq, w->post) != 0)
		return;
	if (sscanf(key + lp, "%d%n", &bucket, &used) != 1 || lp + (size_t)used + lq != lk)
		return;
	if (msa_tune_parse(value, w->ntune, &r) != MSA_OK)
		return;
	int dist = abs(bucket - w->want);
	/* nearest bucket; between two equally near, the smaller shape */
	if (!w->found || dist < w->best_dist || (dist == w->best_dist && bucket < w->best_bucket)) {
		w->found = 1;
		w->best_dist = dist;
		w->best_bucket = bucket;
		w->rec = r;
	}
}

/* The database as the context last read it: plans look records up often
 * and the file rarely changes, so it is read again only when its identity
 * (inode, size, modification time) changes. */
struct msa_tune_db {
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime;
	int n, cap;
	char **keys, **vals;
};

void msa_tune_db_free(msa_tune_db *db)
{
	if (!db)
		return;
	for (int i = 0; i < db->n; i++) {
		free(db->keys[i]);
		free(db->vals[i]);
	}
	free(db->keys);
	free(db->vals);
	free(db);
}

static void db_add(void *arg, const char *key, const char *value)
{
	msa_tune_db *db = arg;
	char *k, *v;
	if (db->n == db->cap) {
		int cap = db->cap ? 2 * db->cap : 32;
		char **nk = realloc(db->keys, sizeof *nk * (size_t)cap), **nv;
		if (!nk)
			return;
		db->keys = nk;
		if (!(nv = realloc(db->vals, sizeof *nv * (size_t)cap)))
			return;
		db->vals = nv;
		db->cap = cap;
	}
	k = strdup(key);
	v = strdup(value);
	if (!k || !v) {
		free(k);
		free(v);
		return;
	}
	db->keys[db->n] = k;
	db->vals[db->n++] = v;
}

/* The context's copy, refreshed when the file changed; NULL when there is
 * no database.  Called with ctx->lock held. */
static msa_tune_db *db_current(msa_ctx *ctx)
{
	char path[1100];
	struct stat st;
	msa_tune_db *db = ctx->tunedb;
	int bad = 0;
	msa_tune_db_path(ctx, path, sizeof path);
	if (stat(path, &st) != 0) {
		msa_tune_db_free(db);
		return ctx->tunedb = NULL;
	}
	if (db && db->dev == st.st_dev && db->ino == st.st_ino && db->size == st.st_size &&
	    db->mtime.tv_sec == st.st_mtim.tv_sec && db->mtime.tv_nsec == st.st_mtim.tv_nsec)
		return db;
	msa_tune_db_free(db);
	if (!(db = calloc(1, sizeof *db)))
		return ctx->tunedb = NULL;
	db->dev = st.st_dev;
	db->ino = st.st_ino;
	db->size = st.st_size;
	db->mtime = st.st_mtim;
	if (msa_kvdb_each(path, db_add, db, &bad) < 0)
		db->n = 0;
	return ctx->tunedb = db;
}

int msa_tune_lookup(msa_ctx *ctx, const msa_variant *v, const char *what, int ntune, long tokens,
		    const char *gpu, int sms, msa_tune_rec *out)
{
	char pre[320], post[160];
	near_walk w;
	msa_tune_db *db;
	if (ctx->no_tuned || !ctx->disk)
		return 0;
	memset(&w, 0, sizeof w);
	key_parts(v, what, pre, sizeof pre, post, sizeof post, gpu, sms);
	w.pre = pre;
	w.post = post;
	w.want = msa_tune_bucket(tokens);
	w.ntune = ntune;
	pthread_mutex_lock(&ctx->lock);
	if ((db = db_current(ctx)))
		for (int i = 0; i < db->n; i++)
			near_visit(&w, db->keys[i], db->vals[i]);
	pthread_mutex_unlock(&ctx->lock);
	if (w.found)
		*out = w.rec;
	return w.found;
}

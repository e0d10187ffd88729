/* emit.c - kernel families, variants and their generated CUDA source.
 *
 * A variant's source is a prelude of constants (the spec's numbers, flags
 * and tunables) followed by the family's template, with common.cuh inlined
 * and #line directives so NVRTC's messages point at template lines.  The
 * output depends only on the variant: same spec, same bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define F_ATTN (MSA_F_DTQ | MSA_F_DTOUT | MSA_F_HEADS | MSA_F_D | MSA_F_BK)
#define F_INDEX (MSA_F_DTIDX | MSA_F_HEADS | MSA_F_DI | MSA_F_BK | MSA_F_TOPK)

static const msa_family families[MSA_K_COUNT] = {
	[MSA_K_DENSE_FWD] = {
		"dense_fwd", F_ATTN | MSA_F_CAUSAL, "dense_fwd.cu", "msa_dense_fwd", NULL, 2,
		{{"block_m", 128, 2, {64, 128}}, {"block_n", 64, 2, {32, 64}}},	/* 185 vs 165 TFLOP/s, H100 */
	},
	[MSA_K_INDEX_SCORES] = {"index_scores", F_INDEX, "index_topk.cu", "msa_index_topk", NULL, 0, {{0}}},
	[MSA_K_INDEX_TOPK] = {"index_topk", F_INDEX, "index_topk.cu", "msa_index_topk", NULL, 0, {{0}}},
	[MSA_K_TOPK] = {"topk", MSA_F_HEADS | MSA_F_BK | MSA_F_TOPK, "topk.cu", "msa_topk", "msa_topk_rows", 0, {{0}}},
	[MSA_K_SPARSE_FWD] = {"sparse_fwd", F_ATTN | MSA_F_TOPK, "sparse_fwd.cu", "msa_sparse_fwd", NULL, 0, {{0}}},
	[MSA_K_COMBINE] = {"combine", MSA_F_DTOUT | MSA_F_HEADS | MSA_F_D, "combine.cu", "msa_combine", NULL, 0, {{0}}},
	[MSA_K_GATHER] = {"gather", MSA_F_HEADS | MSA_F_BK | MSA_F_TOPK, "gather.cu", "msa_gather",
			  "msa_gather_scan", 0, {{0}}},
	[MSA_K_SPARSE_KVO] = {"sparse_kvo", F_ATTN | MSA_F_TOPK, "sparse_kvo.cu", "msa_sparse_kvo", NULL, 0, {{0}}},
	[MSA_K_DENSE_FWD90] = {"dense_fwd90", F_ATTN | MSA_F_CAUSAL, "dense_fwd90.cu", "msa_dense_fwd90", NULL, 2,
			       {{"stages", 2, 2, {2, 3}}, {"sched", MSA_DENSE90_SCHED, 4, {0, 1, 2, 3}}}},
	[MSA_K_SPARSE_KVO90] = {"sparse_kvo90", F_ATTN | MSA_F_TOPK, "sparse_kvo90.cu", "msa_sparse_kvo90", NULL,
				1, {{"tiles_per_cta", 4, 5, {1, 2, 4, 8, 16}}}},
	[MSA_K_INDEX_SCORES90] = {"index_scores90", F_INDEX, "index_topk90.cu", "msa_index_topk90", NULL, 0, {{0}}},
	[MSA_K_INDEX_TOPK90] = {"index_topk90", F_INDEX, "index_topk90.cu", "msa_index_topk90", NULL, 1,
				{{"consumers", 3, 2, {2, 3}}}},
};

const msa_family *msa_family_get(msa_kind kind)
{
	return (unsigned)kind < MSA_K_COUNT ? &families[kind] : NULL;
}

const msa_family *msa_family_find(const char *name)
{
	for (int i = 0; i < MSA_K_COUNT; i++)
		if (strcmp(families[i].name, name) == 0)
			return &families[i];
	return NULL;
}

const msa_template *msa_template_find(const char *name)
{
	for (int i = 0; i < msa_ntemplates; i++)
		if (strcmp(msa_templates[i].name, name) == 0)
			return &msa_templates[i];
	return NULL;
}

static int arch_number(const char *arch)
{
	int n = 0;
	if (sscanf(arch, "sm_%d", &n) != 1)
		return 0;
	return n * 10;
}

/* Whether a family can serve a layer at all (dtype, head dim) on arch
 * (NULL: on some arch). */
static int family_supports(msa_kind kind, const msa_layer *l, const char *arch, char *why, size_t n)
{
	const int sm90_only = kind == MSA_K_DENSE_FWD90 || kind == MSA_K_SPARSE_KVO90 ||
			      kind == MSA_K_INDEX_SCORES90 || kind == MSA_K_INDEX_TOPK90;
	if (sm90_only && arch && strcmp(arch, "sm_90a") != 0) {
		msa_fmt(why, n, "the wgmma kernels need sm_90a");
		return 0;
	}
	switch (kind) {
	case MSA_K_INDEX_SCORES90:
	case MSA_K_INDEX_TOPK90:
		if (l->block != 128 || l->index_dim * msa_dtype_size(l->dtype_index) % 128 ||
		    l->index_dim * msa_dtype_size(l->dtype_index) > 256 || 128 % l->heads_kv) {
			msa_fmt(why, n, "the wgmma index kernel needs block 128, index rows of 128 or 256 bytes "
				"and index heads dividing 128");
			return 0;
		}
		return 1;
	case MSA_K_DENSE_FWD90:
	case MSA_K_SPARSE_KVO90:
		if (l->dtype_q != l->dtype_kv || l->dtype_q == MSA_DT_FP8_E4M3 ||
		    (l->head_dim != 64 && l->head_dim != 128)) {
			msa_fmt(why, n, "the wgmma kernels need 16-bit q and kv, head dim 64 or 128");
			return 0;
		}
		if (kind == MSA_K_SPARSE_KVO90 && (l->block != 128 || l->group > 128 || (l->group & (l->group - 1)))) {
			msa_fmt(why, n, "the wgmma KV-outer kernel needs block 128 and G a power of two <= 128");
			return 0;
		}
		return 1;
	case MSA_K_SPARSE_KVO:
	case MSA_K_GATHER:
		if (l->group > 128 || (l->group & (l->group - 1))) {
			msa_fmt(why, n, "the KV-outer form needs G a power of two <= 128");
			return 0;
		}
		if (kind == MSA_K_GATHER)
			return 1;
		/* fall through */
	case MSA_K_DENSE_FWD:
	case MSA_K_SPARSE_FWD:
		if (l->dtype_q != l->dtype_kv) {
			msa_fmt(why, n, "attention needs q and kv of one type");
			return 0;
		}
		return 1;
	case MSA_K_INDEX_SCORES:
	case MSA_K_INDEX_TOPK:
	case MSA_K_TOPK:
	case MSA_K_COMBINE:
		return 1;
	default:
		return 0;
	}
}

int msa_layer_supports(const msa_layer *l, msa_kind kind)
{
	return family_supports(kind, l, NULL, NULL, 0);
}

int msa_layer_supports_on(const msa_layer *l, msa_kind kind, const char *arch)
{
	return family_supports(kind, l, arch, NULL, 0);
}

/* Hand-rolled appends: this name is the in-memory cache key, built on
 * every lookup, and snprintf alone would cost more than the lookup. */
typedef struct nbuf {
	char *p, *end;
} nbuf;

static void nb_str(nbuf *b, const char *s)
{
	while (*s && b->p < b->end)
		*b->p++ = *s++;
}

static void nb_int(nbuf *b, int v)
{
	char tmp[12];
	int n = 0;
	unsigned u = v < 0 ? 0u - (unsigned)v : (unsigned)v;
	do
		tmp[n++] = (char)('0' + u % 10);
	while ((u /= 10) && n < 11);
	if (v < 0 && b->p < b->end)
		*b->p++ = '-';
	while (n && b->p < b->end)
		*b->p++ = tmp[--n];
}

void msa_variant_name(const msa_variant *v, char *buf, size_t n)
{
	const msa_family *f = msa_family_get(v->kind);
	const msa_layer *l = &v->layer;
	nbuf b = {buf, buf + n - 1};

	if (n == 0)
		return;
	unsigned fl = f ? f->fields : 0;
	nb_str(&b, f ? f->name : "?");
	if (fl & MSA_F_DTQ) {
		nb_str(&b, ".");
		nb_str(&b, msa_dtype_name(l->dtype_q));
	}
	if (fl & MSA_F_DTIDX) {
		nb_str(&b, ".i");
		nb_str(&b, msa_dtype_name(l->dtype_index));
	}
	if (fl & MSA_F_DTOUT) {
		nb_str(&b, ".");
		nb_str(&b, msa_dtype_name(l->dtype_out));
	}
	if (fl & MSA_F_HEADS) {
		nb_str(&b, ".hq");
		nb_int(&b, l->heads_q);
		nb_str(&b, ".hkv");
		nb_int(&b, l->heads_kv);
	}
	if (fl & MSA_F_D) {
		nb_str(&b, ".d");
		nb_int(&b, l->head_dim);
	}
	if (fl & MSA_F_DI) {
		nb_str(&b, ".di");
		nb_int(&b, l->index_dim);
	}
	if (fl & MSA_F_BK) {
		nb_str(&b, ".bk");
		nb_int(&b, l->block);
	}
	if (fl & MSA_F_TOPK) {
		nb_str(&b, ".k");
		nb_int(&b, l->topk);
		nb_str(&b, ".l");
		nb_int(&b, l->local_blocks);
		nb_str(&b, "s");
		nb_int(&b, l->sink_blocks);
	}
	if (fl & MSA_F_CAUSAL)
		nb_str(&b, v->causal ? ".causal" : ".full");
	for (int i = 0; f && i < f->ntunables; i++) {
		nb_str(&b, ".");
		nb_str(&b, f->tunables[i].name);
		nb_int(&b, v->tune[i]);
	}
	nb_str(&b, ".");
	nb_str(&b, v->arch);
	*b.p = '\0';
}

void msa_variant_default(msa_variant *v, msa_kind kind, const msa_layer *layer,
			 const char *arch, int causal)
{
	const msa_family *f = msa_family_get(kind);
	memset(v, 0, sizeof *v);
	v->kind = kind;
	v->layer = *layer;
	v->causal = causal;
	msa_fmt(v->arch, sizeof v->arch, "%s", arch);
	for (int i = 0; f && i < f->ntunables; i++)
		v->tune[i] = f->tunables[i].def;
}

/* The candidate list of tunable i for a layer: the spec's, else the default. */
static int tune_values(const msa_layer *l, const msa_family *f, int i, const int **vals,
		       char *err, size_t errlen)
{
	const msa_tunable *tb = &f->tunables[i];
	for (int s = 0; s < l->ntune; s++) {
		const msa_tune_space *ts = &l->tune[s];
		if (strcmp(ts->kernel, f->name) != 0)
			continue;
		for (int p = 0; p < ts->nparams; p++) {
			if (strcmp(ts->params[p].name, tb->name) != 0)
				continue;
			for (int k = 0; k < ts->params[p].nvalues; k++) {
				int ok = 0;
				for (int a = 0; a < tb->nallowed; a++)
					ok |= tb->allowed[a] == ts->params[p].values[k];
				if (!ok) {
					msa_fmt(err, errlen, "%s:%d: tune.%s.%s = %d is not supported",
						l->file, l->line, f->name, tb->name,
						ts->params[p].values[k]);
					return -1;
				}
			}
			*vals = ts->params[p].values;
			return ts->params[p].nvalues;
		}
	}
	*vals = &tb->def;
	return 1;
}

int msa_dense90_sched(const msa_layer *l, int causal, long max_q)
{
	const msa_family *f = &families[MSA_K_DENSE_FWD90];
	const int *vals;
	char err[8];
	if (tune_values(l, f, 1, &vals, err, sizeof err) > 0 && vals != &f->tunables[1].def)
		return vals[0];	/* the spec's choice */
	return max_q >= (causal ? 32768 : 65536) ? MSA_DENSE90_SCHED_LONG : MSA_DENSE90_SCHED;
}

/* A CTA of index_topk90 holds 64 rows (query x index head pairs) per
 * consumer warpgroup: whole queries only. */
static int consumers_fit(const msa_layer *l, int ncw)
{
	return l->heads_kv > 0 && 64 * ncw % l->heads_kv == 0;
}

/* The most CTAs per row of msa_topk_rows: clusters of up to 8 from sm_90
 * on. */
int msa_topk_cluster(const char *arch)
{
	return arch_number(arch) >= 900 ? 8 : 1;
}

int msa_index90_consumers(const msa_layer *l)
{
	const msa_family *f = &families[MSA_K_INDEX_TOPK90];
	const int *vals;
	char err[8];
	if (tune_values(l, f, 0, &vals, err, sizeof err) > 0 && vals != &f->tunables[0].def)
		return vals[0];	/* the spec's choice */
	return consumers_fit(l, f->tunables[0].def) ? f->tunables[0].def : 2;
}

/* Unknown kernel or parameter names in the spec's tune table are errors. */
static int check_tune_names(const msa_layer *l, char *err, size_t errlen)
{
	for (int s = 0; s < l->ntune; s++) {
		const msa_family *f = msa_family_find(l->tune[s].kernel);
		if (!f) {
			msa_fmt(err, errlen, "%s:%d: tune.%s: no such kernel", l->file, l->line,
				l->tune[s].kernel);
			return MSA_ESPEC;
		}
		for (int p = 0; p < l->tune[s].nparams; p++) {
			int found = 0;
			for (int i = 0; i < f->ntunables; i++)
				found |= strcmp(f->tunables[i].name, l->tune[s].params[p].name) == 0;
			if (!found) {
				msa_fmt(err, errlen, "%s:%d: tune.%s.%s: no such tunable", l->file,
					l->line, f->name, l->tune[s].params[p].name);
				return MSA_ESPEC;
			}
		}
	}
	return MSA_OK;
}

int msa_variants_for_layer(const msa_layer *layer, const char *arch, msa_variant **out,
			   int *n, char *err, size_t errlen)
{
	msa_variant *vs = NULL;
	int count = 0, cap = 0, rc;

	*out = NULL;
	*n = 0;
	if ((rc = check_tune_names(layer, err, errlen)) != MSA_OK)
		return rc;
	for (int kind = 0; kind < MSA_K_COUNT; kind++) {
		const msa_family *f = &families[kind];
		const int *vals[MSA_MAX_TUNABLES];
		int nv[MSA_MAX_TUNABLES], idx[MSA_MAX_TUNABLES] = {0};
		if (!family_supports(kind, layer, arch, NULL, 0))
			continue;
		for (int i = 0; i < f->ntunables; i++)
			if ((nv[i] = tune_values(layer, f, i, &vals[i], err, errlen)) < 0) {
				free(vs);
				return MSA_ESPEC;
			}
		/* plans pick dense_fwd90's schedule by length: build both */
		static const int both_scheds[] = {MSA_DENSE90_SCHED, MSA_DENSE90_SCHED_LONG};
		if (kind == MSA_K_DENSE_FWD90 && vals[1] == &f->tunables[1].def) {
			vals[1] = both_scheds;
			nv[1] = 2;
		}
		int consumers[1];	/* plans take index_topk90's default by the layer */
		if (kind == MSA_K_INDEX_TOPK90 && vals[0] == &f->tunables[0].def) {
			consumers[0] = msa_index90_consumers(layer);
			vals[0] = consumers;
		}
		for (int k = 0; kind == MSA_K_INDEX_TOPK90 && k < nv[0]; k++)
			if (!consumers_fit(layer, vals[0][k])) {
				msa_fmt(err, errlen, "%s:%d: tune.index_topk90.consumers = %d: a CTA's 64 x %d rows "
					"must hold whole queries of %d index heads", layer->file, layer->line,
					vals[0][k], vals[0][k], layer->heads_kv);
				free(vs);
				return MSA_ESPEC;
			}
		for (;;) {	/* odometer over the cartesian product */
			if (count == cap) {
				msa_variant *nvs = realloc(vs, sizeof *vs * (size_t)(cap = cap ? 2 * cap : 16));
				if (!nvs) {
					free(vs);
					return MSA_ENOMEM;
				}
				vs = nvs;
			}
			msa_variant_default(&vs[count], (msa_kind)kind, layer, arch, layer->causal);
			for (int i = 0; i < f->ntunables; i++)
				vs[count].tune[i] = vals[i][idx[i]];
			count++;
			int i = 0;
			while (i < f->ntunables && ++idx[i] == nv[i])
				idx[i++] = 0;
			if (i == f->ntunables)
				break;
		}
	}
	*out = vs;
	*n = count;
	return MSA_OK;
}

/* ------------------------------------------------------------ source */

typedef struct sbuf {
	char *p;
	size_t len, cap;
	int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->oom = 1;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

MSA_FMT(2, 3) static void sb_printf(sbuf *b, const char *fmt, ...)
{
	char tmp[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	if (n > 0)
		sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Append a template; its '#include "x"' lines are replaced by x's text
 * (the first time; later ones vanish), framed by #line so line numbers stay those of the files. */
static int sb_template(sbuf *b, const char *name, const char **seen, int *nseen,
		       char *err, size_t errlen)
{
	const msa_template *t = msa_template_find(name);
	const char *p, *end;
	int line = 1;

	if (!t) {
		msa_fmt(err, errlen, "template %s is not built in", name);
		return MSA_EINVAL;
	}
	for (int i = 0; i < *nseen; i++)
		if (strcmp(seen[i], t->name) == 0)
			return MSA_OK;	/* every header is #pragma once */
	if (*nseen == 16) {
		msa_fmt(err, errlen, "template %s: includes nest too deep", name);
		return MSA_EINVAL;
	}
	seen[(*nseen)++] = t->name;
	sb_printf(b, "#line 1 \"templates/%s\"\n", name);
	for (p = t->text, end = t->text + t->len; p < end; line++) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
		char inc[64];
		if (sscanf(p, "#include \"%63[^\"]\"", inc) == 1) {
			int rc = sb_template(b, inc, seen, nseen, err, errlen);
			if (rc)
				return rc;
			sb_printf(b, "#line %d \"templates/%s\"\n", line + 1, name);
		} else if (strncmp(p, "#pragma once", 12) != 0) {
			sb_put(b, p, n);
		} else {
			sb_put(b, "\n", 1);
		}
		p += n;
	}
	return MSA_OK;
}

/* Shared memory of index_topk: Q tile, two K tiles (16-bit, 64 rows each)
 * and the per-row candidate lists (score + id), with room for alignment. */
static int msa_index_topk_smem(const msa_layer *l)
{
	int kp = msa_layer_kp(l);
	return 3 * 64 * l->index_dim * 2 + 64 * (kp > 0 ? kp : 1) * 8 + 256;
}

/* Launch geometry that the runtime and the prelude share. */
static void family_launch(const msa_variant *v, int *threads, int *smem)
{
	const msa_layer *l = &v->layer;
	switch (v->kind) {
	case MSA_K_DENSE_FWD:
		*threads = v->tune[0] / 16 * 32;
		*smem = (v->tune[0] + 4 * v->tune[1]) * l->head_dim * 2;
		return;
	case MSA_K_SPARSE_FWD: {
		int rw = (l->group + 15) / 16, cw = rw >= 4 ? 1 : 4 / rw, rows = rw * 16;
		*threads = rw * cw * 32;	/* warps split rows, then tile columns */
		*smem = (rows + 4 * 64) * l->head_dim * 2 + (1024 + l->topk * (l->block / 64 + 1) + 1 + 4) * 4;
		return;
	}
	case MSA_K_DENSE_FWD90: {	/* 1 KB alignment, Q buffers, stages of K and V, barriers, slots */
		int tile = 128 * l->head_dim * 2, st = v->tune[0];
		int nqb = 1024 + 2 * tile + 2 * st * tile + 8 * (4 + 4 * st) + 8 <= 232448 ? 2 : 1;
		*threads = 384;
		*smem = 1024 + tile * (nqb + 2 * st) + 8 * (2 * nqb + 4 * st) + 4 * nqb;
		return;
	}
	case MSA_K_SPARSE_KVO90: {
		int tb = 128 * l->head_dim * 2, qt = 128 / (l->group ? l->group : 1);
		if (l->group >= 8) {	/* 1 KB alignment, Q stages, two of K and V, two chunk slots, barriers */
			int meta = 2 * 4 * (1 + v->tune[0] * (10 + 2 * qt)), bars = 8 * (2 * 3 + 12);
			int nq = 1024 + 7 * tb + meta + bars <= 232448 ? 3 : 2;
			*threads = 384;
			*smem = 1024 + (nq + 4) * tb + meta + bars;
			return;
		}
		/* 1 KB alignment, Q, K, V tiles, per tile 10 ints of metadata, QT entries and positions, K, V barriers */
		*threads = 256;
		*smem = 1024 + 3 * tb + 4 * v->tune[0] * (10 + 2 * qt) + 24;
		return;
	}
	case MSA_K_SPARSE_KVO:
		*threads = 256;
		*smem = (128 + 4 * 64) * l->head_dim * 2 + 2 * 4 * 128;
		return;
	case MSA_K_GATHER:
		*threads = 256;
		*smem = 0;
		return;
	case MSA_K_INDEX_SCORES:
	case MSA_K_INDEX_TOPK:
		*threads = 128;
		*smem = msa_index_topk_smem(l);
		return;
	case MSA_K_INDEX_SCORES90:
	case MSA_K_INDEX_TOPK90: {	/* 1 KB alignment, Q + NST K tiles, the lists' ids, barriers */
		int kp = msa_layer_kp(l), rb = l->index_dim * (int)msa_dtype_size(l->dtype_index);
		int ncw = v->kind == MSA_K_INDEX_TOPK90 ? v->tune[0] : 2, bm = 64 * ncw;
		int nst = rb == 256 ? (ncw == 2 ? 5 : 4) : 8;
		*threads = 128 * (1 + ncw);
		*smem = 1024 + (bm + nst * 128) * rb + 4 * bm * (kp > 0 ? kp : 1) + 8 * (1 + 2 * nst);
		return;
	}
	case MSA_K_TOPK:
	case MSA_K_COMBINE:
		*threads = 128;
		*smem = 0;
		return;
	default:
		*threads = *smem = 0;
	}
}

void msa_variant_launch(const msa_variant *v, int *threads, int *smem)
{
	family_launch(v, threads, smem);
}

static void sb_prelude(sbuf *b, const msa_variant *v)
{
	const msa_family *f = msa_family_get(v->kind);
	const msa_layer *l = &v->layer;
	char name[256];
	int threads, smem;

	msa_variant_name(v, name, sizeof name);
	family_launch(v, &threads, &smem);
	sb_printf(b, "// generated by msagen %s: %s\n", MSAGEN_VERSION, name);
	sb_printf(b, "// layer %s\n", l->name);
	sb_printf(b, "#define MSA_HQ %d\n#define MSA_HKV %d\n#define MSA_D %d\n#define MSA_DI %d\n",
		  l->heads_q, l->heads_kv, l->head_dim, l->index_dim);
	sb_printf(b, "#define MSA_BLOCK %d\n#define MSA_TOPK %d\n#define MSA_LOCAL %d\n"
		  "#define MSA_SINK %d\n", l->block, l->topk, l->local_blocks, l->sink_blocks);
	sb_printf(b, "#define MSA_DT_Q %d\n#define MSA_DT_KV %d\n#define MSA_DT_INDEX %d\n"
		  "#define MSA_DT_OUT %d\n", l->dtype_q, l->dtype_kv, l->dtype_index, l->dtype_out);
	sb_printf(b, "#define MSA_CAUSAL %d\n#define MSA_ARCH %d\n", v->causal, arch_number(v->arch));
	for (int i = 0; i < f->ntunables; i++) {
		char up[32];
		size_t k;
		for (k = 0; f->tunables[i].name[k] && k < sizeof up - 1; k++)
			up[k] = (char)(f->tunables[i].name[k] >= 'a' && f->tunables[i].name[k] <= 'z'
				       ? f->tunables[i].name[k] - 32 : f->tunables[i].name[k]);
		up[k] = '\0';
		sb_printf(b, "#define MSA_TUNE_%s %d\n", up, v->tune[i]);
	}
	sb_printf(b, "#define MSA_WRITE_SCORES %d\n", v->kind == MSA_K_INDEX_SCORES || v->kind == MSA_K_INDEX_SCORES90);
	if (v->kind == MSA_K_TOPK)
		sb_printf(b, "#define MSA_TOPK_CLUSTER_MAX %d\n", msa_topk_cluster(v->arch));
	if (v->kind == MSA_K_INDEX_SCORES90 || v->kind == MSA_K_INDEX_TOPK90)	/* consumers' setmaxnreg */
		sb_printf(b, "#define MSA_CREGS %d\n", threads == 384 ? 240 : 160);
	sb_printf(b, "#define MSA_THREADS %d\n#define MSA_SMEM_BYTES %d\n", threads, smem);
}

int msa_emit(const msa_variant *v, char **src, size_t *len, char *err, size_t errlen)
{
	const msa_family *f = msa_family_get(v->kind);
	sbuf b = {0};
	int rc;

	*src = NULL;
	*len = 0;
	if (!f) {
		msa_fmt(err, errlen, "unknown kernel kind %d", (int)v->kind);
		return MSA_EINVAL;
	}
	const char *seen[16];
	int nseen = 0;
	sb_prelude(&b, v);
	rc = sb_template(&b, f->template_name, seen, &nseen, err, errlen);
	if (rc == MSA_OK && b.oom)
		rc = MSA_ENOMEM;
	if (rc != MSA_OK) {
		free(b.p);
		return rc;
	}
	*src = b.p;
	*len = b.len;
	return MSA_OK;
}

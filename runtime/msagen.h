/* msagen.h - the one public header of the msagen library.
 *
 * msagen reads a Lua spec of an attention layer, generates CUDA kernels
 * specialised to it, compiles them with NVRTC and caches the results in
 * memory and on disk.  Every function returns MSA_OK (0) or an error code;
 * the message for the last error is kept on the handle (msa_ctx_error) or
 * written to the caller's buffer where no handle exists yet.
 *
 * Ownership: every *_new / *_load has a matching *_free; freeing NULL is a
 * no-op.  Device pointers are never owned by the library unless a function
 * says so.
 */
#ifndef MSAGEN_H
#define MSAGEN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MSAGEN_VERSION "0.1.0"

enum msa_status {
	MSA_OK = 0,
	MSA_EINVAL,	/* a bad argument: null pointer, wrong size, ... */
	MSA_ESPEC,	/* a spec failed to load or check */
	MSA_ECOMPILE,	/* NVRTC rejected the generated source */
	MSA_ECUDA,	/* a CUDA driver call failed */
	MSA_ENODEV,	/* no CUDA driver or no GPU */
	MSA_ENOMEM,
	MSA_EIO,	/* cache or file trouble */
	MSA_EUNSUPPORTED	/* valid, but no kernel implements it */
};

const char *msa_status_name(int status);

/* ---------------------------------------------------------------- specs */

typedef enum msa_dtype {
	MSA_DT_BF16 = 0,
	MSA_DT_FP16,
	MSA_DT_FP8_E4M3
} msa_dtype;

const char *msa_dtype_name(msa_dtype dt);
size_t msa_dtype_size(msa_dtype dt);

#define MSA_MAX_ARCH 4
#define MSA_MAX_TUNE_KERNELS 8
#define MSA_MAX_TUNE_PARAMS 8
#define MSA_MAX_TUNE_VALUES 16

typedef struct msa_tune_param {
	char name[32];
	int nvalues;
	int values[MSA_MAX_TUNE_VALUES];
} msa_tune_param;

/* Candidate values of one kernel's tunables; the variants are the cartesian
 * product of the lists. */
typedef struct msa_tune_space {
	char kernel[32];
	int nparams;
	msa_tune_param params[MSA_MAX_TUNE_PARAMS];
} msa_tune_space;

/* One attention layer, as a spec describes it (every field checked). */
typedef struct msa_layer {
	char name[64];
	char file[256];		/* spec file that declared it */
	int line;		/* line of the layer{} call */
	int heads_q;		/* Hq */
	int heads_kv;		/* Hkv */
	int group;		/* G = Hq / Hkv */
	int head_dim;		/* D */
	int index_heads;	/* Hi (= Hkv) */
	int index_dim;		/* Di */
	int block;		/* Bk, also the KV page size */
	int topk;		/* k blocks kept per (query, group) */
	int local_blocks;	/* L: 0 or 1 */
	int sink_blocks;	/* S */
	msa_dtype dtype_q, dtype_kv, dtype_index, dtype_out;
	int causal;
	double scale;		/* softmax scale; 1/sqrt(D) unless set */
	int narch;
	char arch[MSA_MAX_ARCH][16];	/* "sm_80", "sm_86", "sm_89", "sm_90a" */
	int ntune;
	msa_tune_space tune[MSA_MAX_TUNE_KERNELS];
} msa_layer;

typedef struct msa_spec {
	char path[256];
	int nlayers;
	msa_layer *layers;	/* owned */
} msa_spec;

/* Load and check a spec file.  On failure *out is NULL and err holds a
 * message of the form "specs/x.lua:7: heads.q = 48 is not ...". */
int msa_spec_load(const char *path, msa_spec **out, char *err, size_t errlen);
/* The same from memory; chunkname is used in messages (e.g. "tiny.lua"). */
int msa_spec_load_string(const char *chunkname, const char *text, size_t len,
			 msa_spec **out, char *err, size_t errlen);
void msa_spec_free(msa_spec *spec);

/* ---------------------------------------------------------------- context */

typedef struct msa_ctx msa_ctx;

typedef struct msa_ctx_opts {
	const char *cache_dir;	/* NULL: $MSAGEN_CACHE_DIR, else
				   $XDG_CACHE_HOME/msagen, else ~/.cache/msagen */
	int no_disk_cache;	/* 1: memory cache only */
	const char *arch;	/* NULL: from the device */
	int device;		/* CUDA device ordinal */
	int verbose;		/* 1: log every cache miss to stderr */
} msa_ctx_opts;

/* opts may be NULL for defaults.  No GPU is needed until a kernel runs. */
int msa_ctx_new(const msa_ctx_opts *opts, msa_ctx **out);
void msa_ctx_free(msa_ctx *ctx);
/* The message of the last error on this handle ("" if none). */
const char *msa_ctx_error(const msa_ctx *ctx);
const char *msa_ctx_cache_dir(const msa_ctx *ctx);

typedef struct msa_build_stats {
	int variants;
	int compiled;		/* cold compiles */
	int disk_hits;
	int failed;
	double seconds;
} msa_build_stats;

/* Compile every variant of every layer of a spec for one arch (NULL: each
 * layer's own archs) on jobs threads (0: one per core), publishing to the
 * disk cache.  progress(ctx_arg, done, total, line) is called after each. */
typedef void (*msa_progress_fn)(void *arg, int done, int total, const char *line);
int msa_build(msa_ctx *ctx, const msa_spec *spec, const char *arch, int jobs,
	      msa_progress_fn progress, void *progress_arg, msa_build_stats *stats);

/* ---------------------------------------------------------------- modules */

/* The kernels of one layer on the context's device.  Kernels are compiled
 * (or fetched from cache) when the module is created. */
typedef struct msa_module msa_module;

int msa_module_new(msa_ctx *ctx, const msa_layer *layer, msa_module **out);
void msa_module_free(msa_module *mod);

/* Dense attention forward over a ragged batch.
 * Layouts (row-major, contiguous):
 *   q   [total_q,  Hq,  D]  dtype_q
 *   k,v [total_kv, Hkv, D]  dtype_kv
 *   out [total_q,  Hq,  D]  dtype_out
 *   lse [total_q,  Hq]      float32, natural log; -inf for an empty row
 * cu_q / cu_kv are host arrays of batch+1 cumulative lengths with
 * kv_len >= q_len for each request when causal (bottom-right aligned).
 * The plan copies what it needs to the device; run only launches, so it can
 * be captured in a CUDA graph.  A plan holds device state that a run uses
 * (on sm_90a, the persistent kernel's work counter, and for a non-causal
 * plan the split tail's partials: SMs x 128 rows x (4 head_dim + 8) bytes,
 * 8.8 MB on an H100 at head dim 128), so one plan serves one run at a time:
 * runs on two streams at once need two plans. */
typedef struct msa_dense_plan msa_dense_plan;

int msa_dense_plan_new(msa_module *mod, int batch, const int *cu_q,
		       const int *cu_kv, int causal, msa_dense_plan **out);
int msa_dense_run(msa_dense_plan *plan, const void *q, const void *k,
		  const void *v, void *out, float *lse, void *stream);
void msa_dense_plan_free(msa_dense_plan *plan);

/* ---------------------------------------------------------------- MSA */

/* A batch for the MSA and dense entry points: ragged lengths, and the KV
 * layout.  Without a page table, KV is contiguous:
 *   k, v [total_kv, Hkv, D]     index keys ki [total_kv, Di]
 * With one (decode, or prefill over a paged cache), pages of one block:
 *   k, v [num_pages, Hkv, Bk, D]  ki [num_pages, Bk, Di]
 * and block b of request r lives in page page_table[r * pages_per_req + b].
 * Always: q [total_q, Hq, D], qi [total_q, Hi, Di], ids [Hi, total_q, k]
 * (int32, -1 unused), scores [Hi, total_q, nb_max] (float), out [total_q,
 * Hq, D], lse [total_q, Hq] (float, natural log).  Query i of a request is
 * at position kv_len - q_len + i (bottom-right causal; kv_len >= q_len). */
typedef struct msa_batch {
	int batch;
	const int *cu_q;	/* host, batch+1 cumulative query counts */
	const int *cu_kv;	/* host, batch+1 cumulative key counts */
	const int *page_table;	/* host [batch, pages_per_req], or NULL */
	int pages_per_req;
	int num_pages;		/* pages in the cache (page ids are checked) */
	/* fp8 e4m3 per-tensor dequantisation scales; 0 means 1 */
	float scale_q, scale_k, scale_v, scale_qi, scale_ki;
	int nsplit;		/* query-outer split-KV count; 0: the plan picks */
	int sparse_mode;	/* 0: the plan picks, 1: query-outer, 2: KV-outer
				   with query gather */
	size_t kvo_workspace;	/* KV-outer partials per pass; 0: the plan
				   picks (1/32 of all partials, 1-8 GiB, at
				   most 1/4 of free memory).  A smaller one
				   means more passes */
} msa_batch;

typedef struct msa_plan msa_plan;

/* Checks the batch, copies lengths and page table to the device and sizes
 * the workspace; the run calls below only launch (CUDA-graph safe).  The
 * workspace belongs to the plan: one run at a time per plan, as for dense
 * plans. */
int msa_plan_new(msa_module *mod, const msa_batch *b, msa_plan **out);
void msa_plan_free(msa_plan *plan);
/* Last dimension of the score tensor: the most blocks of any request. */
int msa_plan_nb_max(const msa_plan *plan);
int msa_plan_nsplit(const msa_plan *plan);

/* Index branch: block scores (max over a block's visible keys of qi.ki). */
int msa_index_scores(msa_plan *p, const void *qi, const void *ki, float *scores, void *stream);
/* Exp-free top-k over given scores (standalone form). */
int msa_topk(msa_plan *p, const float *scores, int32_t *ids, void *stream);
/* Index branch fused with top-k: scores never reach memory. */
int msa_index_topk(msa_plan *p, const void *qi, const void *ki, int32_t *ids, void *stream);
/* Main branch over given block ids. */
int msa_sparse_attn(msa_plan *p, const void *q, const void *k, const void *v,
		    const int32_t *ids, void *out, float *lse, void *stream);
/* The whole layer: fused index + top-k into the plan's workspace, then the
 * main branch (and the split combine when the plan splits). */
int msa_attention(msa_plan *p, const void *qi, const void *ki, const void *q, const void *k,
		  const void *v, void *out, float *lse, void *stream);
/* Dense attention over the plan's KV layout (causal as the layer says). */
int msa_dense(msa_plan *p, const void *q, const void *k, const void *v, void *out,
	      float *lse, void *stream);

#ifdef __cplusplus
}
#endif
#endif

/* check.h - run every kernel of a layer on the GPU against the float64
 * reference on one random shape; shared by `msagen check` and the GPU tests. */
#ifndef MSA_CHECK_H
#define MSA_CHECK_H

#include "gpu.h"

typedef struct chk_case {
	int batch;		/* requests, at most 8 */
	int max_q;		/* q_len uniform in 1..max_q */
	int max_extra;		/* kv_len = q_len + 0..max_extra (or min_extra..max_extra) */
	int paged;		/* KV in shuffled pages */
	int nsplit;		/* 0: the plan picks */
	int mode;		/* msa_batch.sparse_mode of the main plan */
	size_t kvo_workspace;	/* msa_batch.kvo_workspace (0: default) */
	double index_amp;	/* index q and k uniform in +-index_amp (0: 1) */
	int min_extra;		/* kv_len = q_len + min_extra..max_extra (0 when max_extra is less) */
} chk_case;

typedef struct chk_row {
	const char *stage;	/* "index_scores", "topk", ... */
	char shape[160];
	double err, tol;
	int pass;
	char note[400];
} chk_row;

typedef void (*chk_fn)(void *arg, const chk_row *row);

#define CHK_STAGES 7	/* rows per layer and shape, when G allows KV-outer */

/* Emits one row per stage (or one "plan" row if the layer cannot run);
 * returns the number of failed rows. */
int chk_run(gpu_env *env, const msa_layer *l, const chk_case *c, ref_rng *rng, chk_fn fn, void *arg);

#endif

/* internal.h - the library's shared internal header, one section per file.
 * Not installed; tests may include it. */
#ifndef MSAGEN_INTERNAL_H
#define MSAGEN_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "msagen.h"

#define MSA_FMT(a, b) __attribute__((format(printf, a, b)))
#define MSA_COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* ------------------------------------------------------------ util.c */

/* snprintf into a fixed buffer that never overflows; NULL buf is allowed. */
void msa_fmt(char *buf, size_t n, const char *fmt, ...) MSA_FMT(3, 4);
/* malloc'ed printf; NULL on allocation failure. */
char *msa_strdupf(const char *fmt, ...) MSA_FMT(1, 2);
double msa_now_ms(void);
/* Whether environment variable `name` is set to exactly `value`. */
int msa_env_is(const char *name, const char *value);
/* Read a whole file (NUL-terminated); returns MSA_OK, MSA_EIO or MSA_ENOMEM. */
int msa_read_file(const char *path, char **data, size_t *len);
/* mkdir -p */
int msa_mkdirs(const char *path);
#include <sys/types.h>
/* read/write that retry short transfers and EINTR; -1 with errno set. */
ssize_t msa_read_full(int fd, void *buf, size_t len);
int msa_write_full(int fd, const void *buf, size_t len);
/* Publish the concatenated parts as `path` atomically: a temp file named
 * <dir>/<tmp_prefix><pid>.<counter> (O_EXCL) written, fsync'ed, renamed
 * over path, and the directory fsync'ed.  On failure the temp file is
 * gone and err names the file and the cause. */
int msa_publish(const char *path, const char *tmp_prefix, const void *const *parts,
		const size_t *lens, int nparts, char *err, size_t errlen);

/* ------------------------------------------------------------ sha256.c */

typedef struct msa_sha256 {
	uint32_t h[8];
	uint64_t nbytes;
	uint8_t buf[64];
	size_t nbuf;
} msa_sha256;

void msa_sha256_init(msa_sha256 *s);
void msa_sha256_update(msa_sha256 *s, const void *data, size_t len);
void msa_sha256_final(msa_sha256 *s, uint8_t out[32]);
/* One call: 64 lowercase hex digits + NUL into hex. */
void msa_sha256_hex(const void *data, size_t len, char hex[65]);

/* ------------------------------------------------------------ memtab.c */

/* In-memory table from string keys to pointers.  Keys are copied; values
 * are owned by the caller.  Hash for buckets, full-key compare for hits. */
typedef struct msa_memtab msa_memtab;

msa_memtab *msa_memtab_new(void);
void msa_memtab_free(msa_memtab *t);
void *msa_memtab_get(const msa_memtab *t, const char *key);
int msa_memtab_put(msa_memtab *t, const char *key, void *value);
int msa_memtab_count(const msa_memtab *t);
/* Visit every entry (order unspecified). */
void msa_memtab_each(const msa_memtab *t, void (*fn)(void *arg, const char *key, void *value), void *arg);

/* ------------------------------------------------------------ diskcache.c */

/* One file per entry, named <sha256(key)>.msac, in the cache directory:
 *   header:  magic "MSAGENC\1", u32 format version, u32 flags,
 *            u64 key_len, u64 meta_len, u64 blob_len, 32-byte sha256 of
 *            everything after the header
 *   key:     the key preimage (compared in full on every read)
 *   meta:    readable text "name=...\nregs=...\n..."
 *   blob:    the cubin
 * Writers publish through a temp file in the same directory, fsync and
 * rename; a torn, truncated or mismatched entry is a miss. */
#define MSA_DISK_FORMAT 1

typedef struct msa_disk_entry {
	char *meta;		/* NUL-terminated, malloc'ed */
	char *blob;		/* malloc'ed */
	size_t blob_len;
} msa_disk_entry;

void msa_disk_entry_clear(msa_disk_entry *e);
/* The file name (no directory) for a key: 64 hex digits + ".msac". */
void msa_disk_name(const char *key, size_t key_len, char name[80]);
/* 1 = hit (e filled), 0 = miss (absent, corrupt, other key: why says which,
 * may be NULL), <0 = -MSA_E* on an I/O error other than absence. */
int msa_disk_get(const char *dir, const char *key, size_t key_len,
		 msa_disk_entry *e, char *why, size_t whylen);
/* MSA_OK, or a positive MSA_E* with err naming the path and the cause. */
int msa_disk_put(const char *dir, const char *key, size_t key_len,
		 const char *meta, const void *blob, size_t blob_len,
		 char *err, size_t errlen);

typedef struct msa_disk_info {
	char file[80];
	size_t size;
	int ok;			/* header, lengths and checksum verify */
	char problem[128];	/* why not ok */
	char *meta;		/* NUL-terminated, malloc'ed; NULL if unreadable */
} msa_disk_info;

/* Call fn for every *.msac file in dir; returns number seen or -MSA_E*.
 * info (and info->meta) live only during the call. */
int msa_disk_list(const char *dir, void (*fn)(void *arg, const msa_disk_info *info), void *arg);
/* Remove every entry (and stale temp files); returns number removed, or
 * -MSA_EIO if some could not be removed. */
int msa_disk_clear(const char *dir);

/* ------------------------------------------------------------ emit.c */

typedef enum msa_kind {
	MSA_K_DENSE_FWD = 0,
	MSA_K_INDEX_SCORES,
	MSA_K_INDEX_TOPK,
	MSA_K_TOPK,
	MSA_K_SPARSE_FWD,
	MSA_K_COMBINE,
	MSA_K_GATHER,
	MSA_K_SPARSE_KVO,
	MSA_K_DENSE_FWD90,	/* sm_90a: wgmma + TMA */
	MSA_K_SPARSE_KVO90,	/* sm_90a: wgmma */
	MSA_K_INDEX_SCORES90,	/* sm_90a: wgmma + TMA */
	MSA_K_INDEX_TOPK90,
	MSA_K_COUNT
} msa_kind;

#define MSA_MAX_TUNABLES 8

typedef struct msa_tunable {
	const char *name;	/* as in the spec's tune table */
	int def;		/* default value */
	int nallowed;
	int allowed[8];		/* values the template supports */
} msa_tunable;

/* Which layer fields make a family's variants differ (for the name). */
enum {
	MSA_F_DTQ = 1, MSA_F_DTOUT = 2, MSA_F_DTIDX = 4, MSA_F_HEADS = 8, MSA_F_D = 16,
	MSA_F_DI = 32, MSA_F_BK = 64, MSA_F_TOPK = 128, MSA_F_CAUSAL = 256
};

typedef struct msa_family {
	const char *name;	/* "dense_fwd": spec tune key and variant prefix */
	unsigned fields;	/* MSA_F_* in the variant name */
	const char *template_name;	/* file under templates/ */
	const char *entry;	/* extern "C" __global__ name */
	const char *entry2;	/* a second kernel of the same source, or NULL */
	int ntunables;
	msa_tunable tunables[MSA_MAX_TUNABLES];
} msa_family;

const msa_family *msa_family_get(msa_kind kind);
const msa_family *msa_family_find(const char *name);

/* One kernel variant: a family specialised by a layer, flags and tunables. */
typedef struct msa_variant {
	msa_kind kind;
	msa_layer layer;	/* copy: variants outlive specs */
	char arch[16];
	int causal;
	int tune[MSA_MAX_TUNABLES];	/* in family order */
} msa_variant;

/* The readable variant name, which is also the in-memory key, e.g.
 * "dense_fwd.bf16.hq64.hkv4.d128.causal.bm64.bn64.sm_90a". */
void msa_variant_name(const msa_variant *v, char *buf, size_t n);
/* Default variant of a family for a layer (tunables at defaults). */
void msa_variant_default(msa_variant *v, msa_kind kind, const msa_layer *layer,
			 const char *arch, int causal);
/* Every variant a layer asks for on one arch: families x flags x the
 * cartesian product of the spec's tune lists.  *out is malloc'ed. */
int msa_variants_for_layer(const msa_layer *layer, const char *arch,
			   msa_variant **out, int *n, char *err, size_t errlen);
/* dense_fwd90's schedule (tunable "sched": bit 0 ping-pong, bit 1
 * persistent) for a plan: the first the spec lists, else 3, or 0 for
 * requests of >= 32K queries (causal) or >= 64K (not), the faster of the
 * two on the H100 at those lengths (bench/NOTES.md); layers build both. */
int msa_dense90_sched(const msa_layer *l, int causal, long max_q);
/* index_topk90's consumer warpgroups for a layer's plans: the first the
 * spec lists, else the default. */
int msa_index90_consumers(const msa_layer *l);
/* KP: the top-k slots a layer ranks (the rest are forced sinks and local). */
static inline int msa_layer_kp(const msa_layer *l)
{
	return l->topk - l->sink_blocks - l->local_blocks;
}
int msa_topk_cluster(const char *arch);	/* the most CTAs per row */
enum { MSA_DENSE90_SCHED = 3, MSA_DENSE90_SCHED_LONG = 0 };
/* Generate the CUDA source: prelude of constants, then the template after a
 * #line.  *src is malloc'ed and NUL-terminated. */
int msa_emit(const msa_variant *v, char **src, size_t *len, char *err, size_t errlen);
/* Whether any variant of a family serves this layer (dtypes, dims) on any
 * arch; _on: on this arch ("sm_90a"). */
int msa_layer_supports(const msa_layer *l, msa_kind kind);
int msa_layer_supports_on(const msa_layer *l, msa_kind kind, const char *arch);
/* Threads per CTA and dynamic shared memory bytes of a variant. */
void msa_variant_launch(const msa_variant *v, int *threads, int *smem);

/* Embedded templates (build/templates.c, made from templates/ by tools/embed). */
typedef struct msa_template {
	const char *name;
	const char *text;
	size_t len;
} msa_template;
extern const msa_template msa_templates[];
extern const int msa_ntemplates;
const msa_template *msa_template_find(const char *name);

/* ------------------------------------------------------------ nvrtc.c */

typedef struct msa_compiled {
	char *cubin;		/* malloc'ed */
	size_t cubin_len;
	char *log;		/* malloc'ed, maybe "" */
	double ms;
} msa_compiled;

void msa_compiled_clear(msa_compiled *c);
/* Options NVRTC gets for an arch, newline-joined (part of the cache key). */
void msa_nvrtc_options(const char *arch, char *buf, size_t n);
void msa_nvrtc_version_string(char *buf, size_t n);
int msa_nvrtc_compile(const char *src, size_t len, const char *progname,
		      const char *arch, msa_compiled *out, char *err, size_t errlen);
/* The artifact key preimage: format, generator version, NVRTC version,
 * arch, options, full source.  malloc'ed. */
char *msa_artifact_key(const char *src, size_t len, const char *arch, size_t *key_len);

/* ------------------------------------------------------------ driver.c */

/* CUDA driver API, loaded with dlopen so nothing links against libcuda;
 * cuda.h gives the types only.  Fields drop the "cu" prefix because cuda.h
 * #defines many cu* names to their _v2 symbols. */
#include <cuda.h>

#define MSA_CU_FUNCS(X) \
	X(Init, (unsigned int)) \
	X(DriverGetVersion, (int *)) \
	X(GetErrorString, (CUresult, const char **)) \
	X(GetErrorName, (CUresult, const char **)) \
	X(DeviceGet, (CUdevice *, int)) \
	X(DeviceGetCount, (int *)) \
	X(DeviceGetAttribute, (int *, CUdevice_attribute, CUdevice)) \
	X(DeviceGetName, (char *, int, CUdevice)) \
	X(DevicePrimaryCtxRetain, (CUcontext *, CUdevice)) \
	X(DevicePrimaryCtxRelease, (CUdevice)) \
	X(CtxGetCurrent, (CUcontext *)) \
	X(CtxSetCurrent, (CUcontext)) \
	X(CtxGetDevice, (CUdevice *)) \
	X(CtxSynchronize, (void)) \
	X(LibraryLoadData, (CUlibrary *, const void *, CUjit_option *, void **, unsigned int, CUlibraryOption *, void **, unsigned int)) \
	X(LibraryUnload, (CUlibrary)) \
	X(LibraryGetKernel, (CUkernel *, CUlibrary, const char *)) \
	X(KernelGetFunction, (CUfunction *, CUkernel)) \
	X(FuncGetAttribute, (int *, CUfunction_attribute, CUfunction)) \
	X(FuncSetAttribute, (CUfunction, CUfunction_attribute, int)) \
	X(LaunchKernel, (CUfunction, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int, CUstream, void **, void **)) \
	X(LaunchKernelEx, (const CUlaunchConfig *, CUfunction, void **, void **)) \
	X(MemAlloc, (CUdeviceptr *, size_t)) \
	X(MemGetInfo, (size_t *, size_t *)) \
	X(TensorMapEncodeTiled, (CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *, const cuuint64_t *, const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave, CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill)) \
	X(MemFree, (CUdeviceptr)) \
	X(MemcpyHtoD, (CUdeviceptr, const void *, size_t)) \
	X(MemcpyDtoH, (void *, CUdeviceptr, size_t)) \
	X(MemsetD8, (CUdeviceptr, unsigned char, size_t)) \
	X(MemsetD32, (CUdeviceptr, unsigned int, size_t)) \
	X(MemsetD32Async, (CUdeviceptr, unsigned int, size_t, CUstream)) \
	X(StreamSynchronize, (CUstream)) \
	X(EventCreate, (CUevent *, unsigned int)) \
	X(EventRecord, (CUevent, CUstream)) \
	X(EventSynchronize, (CUevent)) \
	X(EventElapsedTime, (float *, CUevent, CUevent)) \
	X(EventDestroy, (CUevent))

typedef struct msa_cu {
#define MSA_CU_FIELD(name, args) CUresult (*name) args;
	MSA_CU_FUNCS(MSA_CU_FIELD)
#undef MSA_CU_FIELD
	int version;
} msa_cu;

/* The process-wide table, loaded once; MSA_ENODEV with a message if there
 * is no driver. */
int msa_cu_get(const msa_cu **out, char *err, size_t errlen);
/* Make a context current on this thread for device `dev` (the primary one,
 * unless the caller already has one current, as PyTorch does). */
int msa_cu_ensure_ctx(int dev, int *cc_major, int *cc_minor, char *err, size_t errlen);
/* "cuMemAlloc failed: CUDA_ERROR_OUT_OF_MEMORY (out of memory)" into err;
 * returns MSA_ECUDA, or MSA_OK when r is CUDA_SUCCESS. */
int msa_cu_check(CUresult r, const char *what, char *err, size_t errlen);

/* ------------------------------------------------------------ jit.c */

#include <pthread.h>

struct msa_ctx {
	char err[8192];		/* last error; NVRTC logs can be long */
	char cache_dir[1024];
	int disk;		/* use the disk cache */
	char arch[16];		/* forced arch, "" = the GPU's */
	int device;
	int verbose;
	int have_gpu;		/* the driver was initialised */
	int no_tuned;		/* ignore the tuning database (MSAGEN_TUNED=0) */
	pthread_mutex_t lock;	/* guards kernels and compiles */
	msa_memtab *kernels;	/* variant name -> msa_kernel */
	struct msa_tune_db *tunedb;	/* tune.c's copy of the tuning database */
};

/* A loaded kernel; owned by the context's table. */
typedef struct msa_kernel {
	char name[256];
	CUlibrary lib;
	CUfunction fn;
	CUfunction fn2;		/* the family's entry2 */
	int threads;
	int smem;
	int tune[MSA_MAX_TUNABLES];	/* the variant's tunables */
} msa_kernel;

typedef struct msa_cubin {
	char *cubin;		/* malloc'ed */
	size_t cubin_len;
	int from_disk;
	double compile_ms;
	int regs, spill;	/* from the compiler's resource report; -1 unknown */
} msa_cubin;

int msa_ctx_fail(msa_ctx *ctx, int rc, const char *fmt, ...) MSA_FMT(3, 4);
int msa_arch_valid(const char *arch);
/* The target arch for kernels run on this context; initialises the driver
 * and makes a context current. */
int msa_ctx_arch(msa_ctx *ctx, char *arch, size_t n);
/* Disk cache, else NVRTC (publishing to the disk cache).  No GPU needed. */
int msa_obtain_cubin(msa_ctx *ctx, const msa_variant *v, msa_cubin *out, char *err, size_t errlen);
/* Memory table, else obtain + load.  Needs the driver. */
int msa_kernel_get(msa_ctx *ctx, const msa_variant *v, msa_kernel **out);

/* ------------------------------------------------------------ dense.c */

struct msa_module {
	msa_ctx *ctx;		/* not owned */
	msa_layer layer;
	char arch[16];
	const msa_cu *cu;
	int sms;		/* multiprocessors of the device */
	char gpu[96];		/* device name, part of tuning keys */
};

/* Whether the module's plans take the sm_90a kernel of a family: the layer
 * and arch support it and the environment variable env is not "mma". */
int msa_module_wgmma(const msa_module *m, msa_kind kind, const char *env);
/* The layer's dense kernel for a plan, tuned for max_q tokens when a
 * record exists; *wgmma says it is dense_fwd90 (no pages). */
int msa_module_dense_kernel(msa_module *m, int causal, long max_q, int paged, msa_kernel **out,
			    int *wgmma);

struct msa_dense_plan {
	msa_module *mod;
	msa_kernel *k;		/* owned by the context */
	int wgmma;		/* k is dense_fwd90: launched with tensor maps */
	int batch, max_q, causal, total_q, total_kv;
	float scale_log2;
	CUdeviceptr dev_cu;	/* cu_q then cu_kv, batch+1 ints each, then ctr */
	CUdeviceptr ctr;	/* 2 ints: dense_fwd90's work counter */
	CUdeviceptr tail;	/* non-causal dense_fwd90's split tail (msa_dense_tail_bytes), or 0 */
	msa_kernel *kcomb;	/* the combine that merges it */
};

/* Check batch+1 cumulative lengths on the host; gives the longest q. */
int msa_check_lengths(msa_ctx *ctx, int batch, const int *cu_q, const int *cu_kv, int causal,
		      int *max_q);
/* The module's kernel of a family at default tunables. */
int msa_module_kernel(msa_module *m, msa_kind kind, int causal, msa_kernel **out);
/* One dense attention launch, by the dense plan and the MSA plan alike. */
typedef struct msa_dense_args {
	msa_module *mod;
	const msa_kernel *kern;
	int wgmma;		/* kern is dense_fwd90: tensor maps, no pages */
	const void *q, *k, *v;
	void *out;
	float *lse;
	CUdeviceptr cu_q, cu_kv, pages;
	int pt_stride;
	float scale_log2, out_scale;
	int causal, batch, max_q, total_q, total_kv;
	CUdeviceptr ctr;	/* 2 ints, zero between launches: the persistent kernel's work counter */
	CUdeviceptr tail;	/* split-tail workspace of msa_dense_tail_bytes, or 0: no split tail */
	const msa_kernel *kcomb;	/* msa_combine, with tail */
} msa_dense_args;
int msa_dense_launch(const msa_dense_args *a, void *stream);
/* Bytes of a persistent non-causal dense_fwd90 launch's split-tail
 * workspace on a device of sms SMs (partial o and lse, row map). */
size_t msa_dense_tail_bytes(const msa_layer *l, int sms);
/* Whether the plan's launch splits its last items (then nfull whole items
 * and tsplit parts of each of the rest). */
int msa_dense_plan_tail(const msa_dense_plan *p, int *nfull, int *tsplit);
/* A TMA tensor map (128-byte swizzle, zero fill) of rank 2 or 3: dims
 * innermost first, row_bytes the byte strides of dims 1.., box in
 * elements; what names the tensor in errors. */
int msa_tmap(msa_ctx *ctx, CUtensorMap *m, const void *base, int dtype, int rank,
	     const long *dims, const long *row_bytes, const int *box, const char *what);
int msa_launch(msa_ctx *ctx, const msa_kernel *k, unsigned gx, unsigned gy, unsigned gz,
	       void **args, void *stream);
int msa_launch_fn(msa_ctx *ctx, CUfunction fn, const char *name, unsigned gx, unsigned gy,
		  unsigned gz, unsigned threads, unsigned smem, void **args, void *stream);
/* A 1-d grid of gx CTAs in clusters of `cluster` (1: a plain launch). */
int msa_launch_cluster(msa_ctx *ctx, CUfunction fn, const char *name, unsigned gx, unsigned cluster,
		       unsigned threads, void **args, void *stream);

/* ------------------------------------------------------------ tune.c */

#define MSA_TUNE_MAX_CAND 64

typedef struct msa_tune_cand {
	int tune[MSA_MAX_TUNABLES];
	double med, p20, p80;	/* ms */
} msa_tune_cand;

typedef struct msa_tune_rec {
	int ntune;		/* values per candidate */
	int ncand;
	int pick;		/* index of the chosen candidate */
	msa_tune_cand cand[MSA_TUNE_MAX_CAND];
} msa_tune_rec;

typedef struct msa_tune_db msa_tune_db;
void msa_tune_db_free(msa_tune_db *db);
void msa_tune_db_path(const msa_ctx *ctx, char *buf, size_t n);
int msa_tune_bucket(long tokens);
/* what: "tiles" (the family's compile-time tunables) or "form" (sparse). */
void msa_tune_key(const msa_variant *v, const char *what, int bucket, const char *gpu, int sms,
		  char *buf, size_t n);
int msa_tune_format(const msa_tune_rec *r, char *buf, size_t n);
int msa_tune_parse(const char *value, int ntune, msa_tune_rec *r);
int msa_tune_pick(const msa_tune_rec *r);
/* The record of the nearest bucket for this GPU; 1 found, 0 none. */
int msa_tune_lookup(msa_ctx *ctx, const msa_variant *v, const char *what, int ntune, long tokens,
		    const char *gpu, int sms, msa_tune_rec *out);

/* ------------------------------------------------------------ msa.c */

enum { MSA_SPARSE_AUTO = 0, MSA_SPARSE_QO = 1, MSA_SPARSE_KVO = 2 };

struct msa_plan {
	msa_module *mod;
	msa_kernel *k_scores, *k_itopk, *k_topk, *k_sparse, *k_combine, *k_dense;
	msa_kernel *k_gather, *k_kvo;
	int dense_wgmma;	/* k_dense is dense_fwd90 */
	int index90;		/* k_scores, k_itopk are the wgmma index kernels */
	int kvo_bf16;		/* k_kvo is sparse_kvo90: bf16 partial o (combine mode 2) */
	long ki_rows;		/* rows of ki: total_kv, or num_pages x block */
	int mode;		/* MSA_SPARSE_QO or _KVO */
	int ksplit;		/* index_scores CTAs per (query tile, head, request) */
	int unfused;		/* msa_attention: scores + top-k (decode), not fused */
	int split_topk;		/* index_topk90 split ksplit ways, lists merged in-kernel (or by
				 * sparse_fwd, attn_merge) */
	CUdeviceptr split_ws;	/* its lists [Hi, total_q, ksplit, KP] x (key, id), then tickets */
	int attn_merge;		/* msa_attention: the index kernel leaves the split lists and each
				 * sparse_fwd CTA merges its row (MSAGEN_SPLIT_MERGE=index: the
				 * index kernel merges) */
	int topk_ctas;		/* msa_topk: CTAs per row (a cluster when > 1), 0: a warp per row */
	int dense_qo;		/* msa_dense: sparse_fwd over every key (decode), not the tile kernels */
	CUdeviceptr scores_ws;	/* [Hi, total_q, nb_max] when unfused */
	int chunk;		/* queries per KV-outer pass */
	int nbt, max_tiles;	/* blocks of all requests; tiles per pass */
	int npass;		/* KV-outer passes: total_q / chunk, rounded up */
	CUdeviceptr blk_off;	/* [batch+1] first block of each request */
	CUdeviceptr kvo;	/* KV-outer workspace, carved below */
	CUdeviceptr cursor, start, list, tiles, ntiles, kvo_part;
	int batch, max_q, total_q, total_kv, nb_max, nsplit, pages_per_req;
	int paged;
	float scale_log2, out_scale, idx_scale;	/* with fp8 widening folded in */
	CUdeviceptr dev;	/* cu_q, cu_kv, page table */
	CUdeviceptr cu_q, cu_kv, pages;
	CUdeviceptr ids;	/* [Hi, total_q, k] workspace of msa_attention */
	CUdeviceptr dense_ctr;	/* 2 ints: dense_fwd90's work counter */
	CUdeviceptr part_o, part_lse;	/* split partials */
};

/* ------------------------------------------------------------ kvdb.c */

/* kvdb.c: a text file of records "key<TAB>value", one per line, each line
 * guarded by a checksum.  Readers never lock and see either the old or the
 * new file (writers publish by temp file + fsync + rename); writers
 * serialise read-modify-write with flock on "<path>.lock", so concurrent
 * writers lose nothing.  A line that fails its checksum or does not parse
 * is skipped (counted in *bad), never fatal.  Keys and values are
 * printable text without TAB or newline (put/get reject others with
 * MSA_EINVAL). */
int msa_kvdb_get(const char *path, const char *key, char **value);	/* 1 found (*value malloc'ed), 0 absent (also when the file is missing), <0 -MSA_EIO */
int msa_kvdb_put(const char *path, const char *key, const char *value, char *err, size_t errlen);	/* replaces the key's record; MSA_OK or an error with path + strerror in err */
int msa_kvdb_del(const char *path, const char *key, char *err, size_t errlen);	/* MSA_OK whether or not it existed */
int msa_kvdb_each(const char *path, void (*fn)(void *arg, const char *key, const char *value), void *arg, int *bad);	/* visits valid records in file order; returns the count or -MSA_EIO; missing file = 0 */
int msa_kvdb_merge(const char *dst, const char *src, int *merged, char *err, size_t errlen);	/* import: puts every valid record of src into dst in one locked update (src's value wins); *merged = records taken */

#endif

/* ref.h - float64 CPU reference of every MSA stage (shared/MSA.md).
 *
 * Header-only and written apart from the GPU code: plain loops, obviously
 * correct over fast.  GPU tests include it and compare kernels against it;
 * t_ref.c tests it.  Every function is static and marked unused, so a test
 * that needs a few of them still builds warning-free.
 *
 * Layouts (row-major, last index fastest; t = global query row, j = key):
 *   q [total_q, Hq, D]            k, v [total_kv, Hkv, D]
 *   qi [total_q, Hi, Di]          ki [total_kv, Di]  (one shared key head)
 *   scores [Hi, total_q, nb_max]  ids [Hi, total_q, k]  (Hi = Hkv)
 *   out [total_q, Hq, D]          lse [total_q, Hq]  (natural log)
 * Requests are concatenated along the token axis (ref_batch).
 *
 * Functions that allocate return 0, or -1 on bad arguments or no memory.
 * The caller owns every array; nothing here keeps a pointer.
 */
#ifndef MSA_REF_H
#define MSA_REF_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REF_API __attribute__((unused)) static

/* ------------------------------------------------------- number formats */

/* Round half to even without relying on the FPU rounding mode. */
REF_API double ref_rint_even(double y)
{
	double r = floor(y), d = y - r;

	if (d > 0.5 || (d == 0.5 && fmod(r, 2.0) != 0.0))
		r += 1.0;
	return r;
}

/* Round x to mbits explicit mantissa bits, minimum normal exponent emin.
 * Below 2^emin the quantum stays 2^(emin - mbits): that is what subnormals
 * are.  Scaling by powers of two is exact, so this is a single rounding.
 * No upper limit: each format decides overflow itself. */
REF_API double ref_round_fmt(double x, int mbits, int emin)
{
	int e;

	if (x == 0.0 || !isfinite(x))
		return x;
	frexp(x, &e);		/* |x| = f * 2^e, f in [0.5, 1) */
	e -= 1;			/* exponent of the leading bit */
	if (e < emin)
		e = emin;
	return ldexp(ref_rint_even(ldexp(x, mbits - e)), e - mbits);
}

/* Bits (no sign) of a representable magnitude a >= 0. */
REF_API uint32_t ref_pack(double a, int mbits, int bias)
{
	int e;

	if (a == 0.0)
		return 0;
	frexp(a, &e);
	e -= 1;
	if (e < 1 - bias)	/* subnormal: exponent field 0 */
		return (uint32_t)ldexp(a, mbits - (1 - bias));
	return (uint32_t)(e + bias) << mbits |
	       (uint32_t)(ldexp(a, mbits - e) - ldexp(1.0, mbits));
}

/* Magnitude of finite bits (no sign; the caller handles inf and NaN). */
REF_API double ref_unpack(uint32_t bits, int mbits, int bias)
{
	uint32_t m = bits & ((1u << mbits) - 1), e = bits >> mbits;

	if (e == 0)
		return ldexp((double)m, 1 - bias - mbits);
	return ldexp((double)(m | 1u << mbits), (int)e - bias - mbits);
}

/* bf16: RNE, overflow to inf, NaN stays NaN (quiet bit set, sign and top
 * payload kept). */
REF_API uint16_t ref_f2bf(float f)
{
	uint32_t u;
	uint16_t s;
	double a;

	memcpy(&u, &f, sizeof u);
	s = (uint16_t)(u >> 16 & 0x8000);
	if (isnan(f))
		return (uint16_t)(u >> 16 | 0x0040);
	a = ref_round_fmt(fabs((double)f), 7, -126);
	if (a > ldexp(255.0, 120))	/* above bf16 max, or inf */
		return s | 0x7f80;
	return (uint16_t)(s | ref_pack(a, 7, 127));
}

REF_API float ref_bf2f(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;

	memcpy(&f, &u, sizeof f);
	return f;
}

/* IEEE half: RNE, subnormals, overflow (>= 65520) to inf, NaN -> 0x7e00. */
REF_API uint16_t ref_f2h(float f)
{
	uint16_t s = signbit(f) ? 0x8000 : 0;
	double a;

	if (isnan(f))
		return s | 0x7e00;
	a = ref_round_fmt(fabs((double)f), 10, -14);
	if (a > 65504.0)
		return s | 0x7c00;
	return (uint16_t)(s | ref_pack(a, 10, 15));
}

REF_API float ref_h2f(uint16_t h)
{
	uint32_t mag = h & 0x7fffu;
	double a;

	if ((mag >> 10) == 31)
		a = (mag & 0x3ffu) ? NAN : INFINITY;
	else
		a = ref_unpack(mag, 10, 15);
	return (float)((h & 0x8000u) ? -a : a);
}

/* OCP FP8 E4M3 (bias 7, max 448, no inf): RNE; anything beyond 448 after
 * rounding, infinities included, saturates to +-448 (0x7e / 0xfe), like
 * CUDA's satfinite conversion; NaN -> 0x7f / 0xff keeping the sign. */
REF_API uint8_t ref_f2e4m3(float f)
{
	uint8_t s = signbit(f) ? 0x80 : 0;
	double a;

	if (isnan(f))
		return s | 0x7f;
	a = ref_round_fmt(fabs((double)f), 3, -6);
	if (a > 448.0)
		return s | 0x7e;
	return (uint8_t)(s | ref_pack(a, 3, 7));
}

REF_API float ref_e4m3_2f(uint8_t b)
{
	double a;

	if ((b & 0x7f) == 0x7f)
		return NAN;
	a = ref_unpack(b & 0x7fu, 3, 7);
	return (float)((b & 0x80) ? -a : a);
}

/* Element formats of device buffers, for filling inputs and reading
 * outputs without a switch in every test. */
enum ref_fmt { REF_F32, REF_BF16, REF_F16, REF_E4M3 };

REF_API size_t ref_fmt_size(enum ref_fmt fmt)
{
	return fmt == REF_F32 ? 4 : fmt == REF_E4M3 ? 1 : 2;
}

REF_API double ref_load(enum ref_fmt fmt, const void *src, size_t i)
{
	switch (fmt) {
	case REF_BF16:
		return ref_bf2f(((const uint16_t *)src)[i]);
	case REF_F16:
		return ref_h2f(((const uint16_t *)src)[i]);
	case REF_E4M3:
		return ref_e4m3_2f(((const uint8_t *)src)[i]);
	default:
		return ((const float *)src)[i];
	}
}

/* Stores x rounded to fmt (through float: inputs come from float data). */
REF_API void ref_store(enum ref_fmt fmt, void *dst, size_t i, double x)
{
	switch (fmt) {
	case REF_BF16:
		((uint16_t *)dst)[i] = ref_f2bf((float)x);
		break;
	case REF_F16:
		((uint16_t *)dst)[i] = ref_f2h((float)x);
		break;
	case REF_E4M3:
		((uint8_t *)dst)[i] = ref_f2e4m3((float)x);
		break;
	default:
		((float *)dst)[i] = (float)x;
	}
}

REF_API void ref_dequant(enum ref_fmt fmt, const void *src, double *dst, size_t n)
{
	for (size_t i = 0; i < n; i++)
		dst[i] = ref_load(fmt, src, i);
}

/* ------------------------------------------------------------------ rng */

/* splitmix64: tiny, seedable, and any seed (0 included) is fine. */
typedef struct ref_rng {
	uint64_t s;
} ref_rng;

REF_API ref_rng ref_rng_new(uint64_t seed)
{
	ref_rng r = { seed };
	return r;
}

REF_API uint64_t ref_next(ref_rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform in [-1, 1): 53 random bits, exact scaling. */
REF_API double ref_uniform(ref_rng *r)
{
	return (double)(ref_next(r) >> 11) * 0x1p-52 - 1.0;
}

/* Uniform integer in [lo, hi], both ends included; lo if hi < lo. */
REF_API int ref_randint(ref_rng *r, int lo, int hi)
{
	if (hi <= lo)
		return lo;
	return (int)((int64_t)lo + (int64_t)(ref_next(r) % (uint64_t)((int64_t)hi - lo + 1)));
}

/* Fills n elements of dst (format fmt) with amp * uniform, rounded to fmt;
 * dbl (may be NULL) gets the exact values the device will see. */
REF_API void ref_fill(ref_rng *r, enum ref_fmt fmt, void *dst, double *dbl, size_t n, double amp)
{
	for (size_t i = 0; i < n; i++) {
		ref_store(fmt, dst, i, amp * ref_uniform(r));
		if (dbl)
			dbl[i] = ref_load(fmt, dst, i);
	}
}

/* ---------------------------------------------------------------- batch */

/* cu_q, cu_kv: batch + 1 cumulative counts starting at 0. */
typedef struct ref_batch {
	int batch;
	const int *cu_q;
	const int *cu_kv;
} ref_batch;

REF_API int ref_q_len(const ref_batch *b, int r)
{
	return b->cu_q[r + 1] - b->cu_q[r];
}

REF_API int ref_kv_len(const ref_batch *b, int r)
{
	return b->cu_kv[r + 1] - b->cu_kv[r];
}

REF_API int ref_total_q(const ref_batch *b)
{
	return b->cu_q[b->batch];
}

REF_API int ref_total_kv(const ref_batch *b)
{
	return b->cu_kv[b->batch];
}

/* Bottom-right causal position of query i of request r; negative when
 * q_len > kv_len puts the query before every key (it then sees nothing). */
REF_API int ref_pos(const ref_batch *b, int r, int i)
{
	return ref_kv_len(b, r) - ref_q_len(b, r) + i;
}

/* n(i) = p / Bk + 1 blocks visible from position p (0 when p < 0). */
REF_API int ref_visible_blocks(int p, int Bk)
{
	return p < 0 ? 0 : p / Bk + 1;
}

REF_API int ref_nb_max(const ref_batch *b, int Bk)
{
	int nb = 0;

	for (int r = 0; r < b->batch; r++) {
		int n = (ref_kv_len(b, r) + Bk - 1) / Bk;
		if (n > nb)
			nb = n;
	}
	return nb;
}

REF_API int ref_max_kv_len(const ref_batch *b)
{
	int m = 0;

	for (int r = 0; r < b->batch; r++)
		if (ref_kv_len(b, r) > m)
			m = ref_kv_len(b, r);
	return m;
}

/* cu_* start at 0 and never decrease. */
REF_API int ref_batch_ok(const ref_batch *b)
{
	if (!b || b->batch < 0 || !b->cu_q || !b->cu_kv || b->cu_q[0] || b->cu_kv[0])
		return 0;
	for (int r = 0; r < b->batch; r++)
		if (ref_q_len(b, r) < 0 || ref_kv_len(b, r) < 0)
			return 0;
	return 1;
}

/* ------------------------------------------------------------ attention */

/* Softmax attention of one query row over the listed keys of one request
 * and kv head: key j sits at kb + j * stride (likewise vb).  logit is
 * scratch of nkeys doubles.  No keys: out 0, lse -inf. */
REF_API void ref_attend(const double *qrow, const double *kb, const double *vb, size_t stride,
			const int *keys, int nkeys, int D, double scale, double *logit,
			double *out, double *lse)
{
	double m = -INFINITY, sum = 0.0;

	for (int d = 0; d < D; d++)
		out[d] = 0.0;
	if (nkeys == 0) {
		*lse = -INFINITY;
		return;
	}
	for (int t = 0; t < nkeys; t++) {
		const double *kr = kb + (size_t)keys[t] * stride;
		double s = 0.0;
		for (int d = 0; d < D; d++)
			s += qrow[d] * kr[d];
		logit[t] = scale * s;
		if (logit[t] > m)
			m = logit[t];
	}
	for (int t = 0; t < nkeys; t++) {
		const double *vr = vb + (size_t)keys[t] * stride;
		double w = exp(logit[t] - m);
		sum += w;
		for (int d = 0; d < D; d++)
			out[d] += w * vr[d];
	}
	for (int d = 0; d < D; d++)
		out[d] /= sum;
	*lse = m + log(sum);
}

/* Dense attention, MSA.md section 4.  Query head hq reads kv head
 * hq / (Hq / Hkv).  causal: keys j <= p(i); otherwise all kv_len keys of
 * the request.  lse may be NULL. */
REF_API int ref_dense(const ref_batch *b, const double *q, const double *k, const double *v,
		      int Hq, int Hkv, int D, int causal, double scale, double *out, double *lse)
{
	int G, maxkv, *keys;
	double *logit, dummy;

	if (!ref_batch_ok(b) || Hq <= 0 || Hkv <= 0 || D <= 0 || Hq % Hkv)
		return -1;
	G = Hq / Hkv;
	maxkv = ref_max_kv_len(b);
	keys = malloc(((size_t)maxkv + 1) * sizeof *keys);
	logit = malloc(((size_t)maxkv + 1) * sizeof *logit);
	if (!keys || !logit) {
		free(keys);
		free(logit);
		return -1;
	}
	for (int j = 0; j <= maxkv; j++)
		keys[j] = j;
	for (int r = 0; r < b->batch; r++) {
		int kvl = ref_kv_len(b, r);
		for (int i = 0; i < ref_q_len(b, r); i++) {
			size_t t = (size_t)b->cu_q[r] + i;
			int p = ref_pos(b, r, i);
			int lim = !causal ? kvl : p < 0 ? 0 : p + 1 < kvl ? p + 1 : kvl;
			for (int hq = 0; hq < Hq; hq++) {
				size_t base = ((size_t)b->cu_kv[r] * Hkv + hq / G) * D;
				ref_attend(q + (t * Hq + hq) * D, k + base, v + base, (size_t)Hkv * D,
					   keys, lim, D, scale, logit, out + (t * Hq + hq) * D,
					   lse ? lse + t * Hq + hq : &dummy);
			}
		}
	}
	free(keys);
	free(logit);
	return 0;
}

/* Sparse attention, MSA.md section 3.  The key set of (query t, group g)
 * is the union of the blocks ids[g, t, 0..topk-1], restricted to j <= p
 * and j < kv_len.  A block listed twice counts once; -1 and any id outside
 * 0..ceil(kv_len/Bk)-1 add nothing (check ids apart if that matters).
 * lse may be NULL. */
REF_API int ref_sparse(const ref_batch *b, const double *q, const double *k, const double *v,
		       const int32_t *ids, int Hq, int Hkv, int D, int Bk, int topk,
		       double scale, double *out, double *lse)
{
	int G, maxkv, nbm, tq, *keys;
	double *logit, dummy;
	unsigned char *sel;

	if (!ref_batch_ok(b) || Hq <= 0 || Hkv <= 0 || D <= 0 || Hq % Hkv || Bk <= 0 || topk < 0)
		return -1;
	G = Hq / Hkv;
	maxkv = ref_max_kv_len(b);
	nbm = ref_nb_max(b, Bk);
	tq = ref_total_q(b);
	keys = malloc(((size_t)maxkv + 1) * sizeof *keys);
	logit = malloc(((size_t)maxkv + 1) * sizeof *logit);
	sel = malloc((size_t)nbm + 1);
	if (!keys || !logit || !sel)
		goto fail;
	for (int r = 0; r < b->batch; r++) {
		int kvl = ref_kv_len(b, r), nb = (kvl + Bk - 1) / Bk;
		for (int i = 0; i < ref_q_len(b, r); i++) {
			size_t t = (size_t)b->cu_q[r] + i;
			int p = ref_pos(b, r, i);
			for (int g = 0; g < Hkv; g++) {
				const int32_t *row = ids + ((size_t)g * tq + t) * topk;
				int n = 0;
				memset(sel, 0, (size_t)nbm + 1);
				for (int s = 0; s < topk; s++)
					if (row[s] >= 0 && row[s] < nb)
						sel[row[s]] = 1;
				for (int blk = 0; blk < nb; blk++)
					for (int j = blk * Bk; sel[blk] && j < (blk + 1) * Bk && j < kvl && j <= p; j++)
						keys[n++] = j;
				for (int hq = g * G; hq < (g + 1) * G; hq++) {
					size_t base = ((size_t)b->cu_kv[r] * Hkv + g) * D;
					ref_attend(q + (t * Hq + hq) * D, k + base, v + base, (size_t)Hkv * D,
						   keys, n, D, scale, logit, out + (t * Hq + hq) * D,
						   lse ? lse + t * Hq + hq : &dummy);
				}
			}
		}
	}
	free(keys);
	free(logit);
	free(sel);
	return 0;
fail:
	free(keys);
	free(logit);
	free(sel);
	return -1;
}

/* --------------------------------------------------------- index branch */

/* Block scores, MSA.md section 1: scores[h, t, blk] = max over the block's
 * keys j <= p(t), j < kv_len of the raw dot qi[t, h] . ki[j]; -inf where no
 * such key exists (future blocks, blocks past the request's own length up
 * to nb_max = ref_nb_max(b, Bk)). */
REF_API int ref_index_scores(const ref_batch *b, const double *qi, const double *ki,
			     int Hi, int Di, int Bk, double *scores)
{
	int nbm, tq;

	if (!ref_batch_ok(b) || Hi <= 0 || Di <= 0 || Bk <= 0)
		return -1;
	nbm = ref_nb_max(b, Bk);
	tq = ref_total_q(b);
	for (size_t x = 0; x < (size_t)Hi * tq * nbm; x++)
		scores[x] = -INFINITY;
	for (int r = 0; r < b->batch; r++) {
		int kvl = ref_kv_len(b, r);
		for (int i = 0; i < ref_q_len(b, r); i++) {
			size_t t = (size_t)b->cu_q[r] + i;
			int p = ref_pos(b, r, i);
			for (int h = 0; h < Hi; h++) {
				const double *qr = qi + (t * Hi + h) * Di;
				double *srow = scores + ((size_t)h * tq + t) * nbm;
				for (int j = 0; j < kvl && j <= p; j++) {
					const double *kr = ki + ((size_t)b->cu_kv[r] + j) * Di;
					double s = 0.0;
					for (int d = 0; d < Di; d++)
						s += qr[d] * kr[d];
					if (s > srow[j / Bk])
						srow[j / Bk] = s;
				}
			}
		}
	}
	return 0;
}

/* ---------------------------------------------------------------- top-k
 *
 * One (query, group) row, MSA.md section 2.  n = visible blocks,
 * L = local_blocks (0 or 1), S = sink_blocks; requires k >= 1, S >= 0,
 * S + L <= k.
 *  - n <= k: slots 0..n-1 hold blocks 0..n-1 ascending, the rest -1
 *    (sinks and the local block are among them anyway; L and S change
 *    nothing).
 *  - n > k: slots 0..S-1 hold the sinks 0..S-1 ascending; with L = 1 slot
 *    k-1 holds the local block n-1; slots S..k-1-L hold the k-S-L
 *    highest-scoring blocks among S..n-1-L (with L = 0 the local block is
 *    an ordinary candidate), in descending score, ties to the lower id.
 *    Every slot is used (n > k leaves enough candidates).
 * A NaN score ranks as -inf.  Selection is a plain repeated arg-max. */

REF_API double ref_rank_key(double s)
{
	return isnan(s) ? -INFINITY : s;
}

REF_API void ref_topk_row(const double *score, int n, int k, int L, int S,
			  unsigned char *taken, int32_t *id)
{
	int lo = S, hi = n - L;	/* candidates lo..hi-1 */

	for (int s = 0; s < k; s++)
		id[s] = -1;
	if (n <= k) {
		for (int blk = 0; blk < n; blk++)
			id[blk] = blk;
		return;
	}
	for (int blk = 0; blk < S; blk++)
		id[blk] = blk;
	if (L)
		id[k - 1] = n - 1;
	memset(taken, 0, (size_t)n);
	for (int s = S; s < k - L; s++) {
		int best = -1;
		for (int blk = lo; blk < hi; blk++)	/* strict > keeps the lower id on ties */
			if (!taken[blk] && (best < 0 || ref_rank_key(score[blk]) > ref_rank_key(score[best])))
				best = blk;
		taken[best] = 1;
		id[s] = best;
	}
}

REF_API int ref_topk_args_ok(const ref_batch *b, int Hi, int Bk, int k, int L, int S)
{
	return ref_batch_ok(b) && Hi > 0 && Bk > 0 && k >= 1 && (L == 0 || L == 1) &&
	       S >= 0 && S + L <= k;
}

/* scores [Hi, total_q, nb_max] -> ids [Hi, total_q, k]. */
REF_API int ref_topk(const double *scores, const ref_batch *b, int Hi, int Bk, int k,
		     int local_blocks, int sink_blocks, int32_t *ids)
{
	int nbm, tq;
	unsigned char *taken;

	if (!ref_topk_args_ok(b, Hi, Bk, k, local_blocks, sink_blocks))
		return -1;
	nbm = ref_nb_max(b, Bk);
	tq = ref_total_q(b);
	taken = malloc((size_t)nbm + 1);
	if (!taken)
		return -1;
	for (int r = 0; r < b->batch; r++) {
		for (int i = 0; i < ref_q_len(b, r); i++) {
			size_t t = (size_t)b->cu_q[r] + i;
			int n = ref_visible_blocks(ref_pos(b, r, i), Bk);
			for (int h = 0; h < Hi; h++)
				ref_topk_row(scores + ((size_t)h * tq + t) * nbm, n, k, local_blocks,
					     sink_blocks, taken, ids + ((size_t)h * tq + t) * k);
		}
	}
	free(taken);
	return 0;
}

/* a and b agree within abs_eps + rel_eps * max(|a|, |b|); equal
 * infinities agree, anything else non-finite does not. */
REF_API int ref_close(double a, double b, double rel_eps, double abs_eps)
{
	if (a == b)
		return 1;
	if (!isfinite(a) || !isfinite(b))
		return 0;
	return fabs(a - b) <= abs_eps + rel_eps * fmax(fabs(a), fabs(b));
}

/* First bad slot of one row, or -1; *why says what is wrong.  exact: slot
 * by slot equality.  Otherwise forced slots and rows with n <= k must
 * still be equal, and each ranked slot must hold a distinct candidate
 * whose score is close to the reference's choice for that slot: a swap or
 * a different pick among near-equal scores passes, a real mistake not. */
REF_API int ref_topk_row_bad(const int32_t *got, const int32_t *want, const double *score, int n,
			     int k, int L, int S, int exact, double rel_eps, double abs_eps,
			     const char **why)
{
	for (int s = 0; s < k; s++) {
		int forced = n <= k || s < S || (L && s == k - 1);
		int g = got[s];
		*why = "wrong block";
		if (exact || forced) {
			if (g != want[s])
				return s;
			continue;
		}
		*why = "not a candidate block";
		if (g < S || g >= n - L)
			return s;
		*why = "duplicate block";
		for (int u = S; u < s; u++)
			if (got[u] == g)
				return s;
		*why = "score differs from the reference's pick beyond tolerance";
		if (!ref_close(score[g], score[want[s]], rel_eps, abs_eps))
			return s;
	}
	return -1;
}

REF_API int ref_topk_compare(const int32_t *got, const double *scores, const ref_batch *b, int Hi,
			     int Bk, int k, int L, int S, int exact, double rel_eps, double abs_eps,
			     char *msg, size_t msglen)
{
	int nbm, tq, rc = 1;
	int32_t *want;

	if (msg && msglen)
		msg[0] = '\0';
	if (!ref_topk_args_ok(b, Hi, Bk, k, L, S)) {
		if (msg && msglen)
			snprintf(msg, msglen, "bad top-k arguments");
		return 0;
	}
	nbm = ref_nb_max(b, Bk);
	tq = ref_total_q(b);
	want = malloc(((size_t)Hi * tq * k + 1) * sizeof *want);
	if (!want || ref_topk(scores, b, Hi, Bk, k, L, S, want)) {
		if (msg && msglen)
			snprintf(msg, msglen, "out of memory");
		free(want);
		return 0;
	}
	for (int h = 0; h < Hi && rc; h++) {
		for (int r = 0; r < b->batch && rc; r++) {
			for (int i = 0; i < ref_q_len(b, r) && rc; i++) {
				size_t t = (size_t)b->cu_q[r] + i, row = ((size_t)h * tq + t) * k;
				int p = ref_pos(b, r, i), n = ref_visible_blocks(p, Bk);
				const double *sc = scores + ((size_t)h * tq + t) * nbm;
				const char *why = "";
				int s = ref_topk_row_bad(got + row, want + row, sc, n, k, L, S, exact,
							 rel_eps, abs_eps, &why);
				if (s < 0)
					continue;
				rc = 0;
				if (msg && msglen)
					snprintf(msg, msglen,
						 "query %zu group %d slot %d: got %d, want %d (%s; request %d, "
						 "position %d, %d visible blocks)",
						 t, h, s, (int)got[row + s], (int)want[row + s], why, r, p, n);
			}
		}
	}
	free(want);
	return rc;
}

/* 1 when got equals ref_topk's answer on these scores (the reference
 * already applies the tie rule, so equality is the check); 0 otherwise,
 * with the first mismatch (query, group, slot, got, want) in msg. */
REF_API int ref_topk_check(const int32_t *got, const double *scores, const ref_batch *b, int Hi,
			   int Bk, int k, int local_blocks, int sink_blocks, char *msg, size_t msglen)
{
	return ref_topk_compare(got, scores, b, Hi, Bk, k, local_blocks, sink_blocks, 1, 0.0, 0.0,
				msg, msglen);
}

/* Like ref_topk_check, but for ids a GPU picked from scores it computed in
 * lower precision: a ranked slot may hold another candidate whose
 * reference score is within abs_eps + rel_eps * max|score| of the score of
 * the reference's block for that slot. */
REF_API int ref_topk_equivalent(const int32_t *got, const double *scores, const ref_batch *b,
				int Hi, int Bk, int k, int local_blocks, int sink_blocks,
				double rel_eps, double abs_eps, char *msg, size_t msglen)
{
	return ref_topk_compare(got, scores, b, Hi, Bk, k, local_blocks, sink_blocks, 0, rel_eps,
				abs_eps, msg, msglen);
}

/* ------------------------------------------------------------ paged KV */

/* pages [num_pages, H, Bk, D] of elem-byte elements -> out [kv_len, H, D]:
 * token j of the request lives in page table[j / Bk], slot j % Bk.
 * Returns -1 if the table names a page outside 0..num_pages-1. */
REF_API int ref_gather_pages(const void *pages, size_t elem, int num_pages, int H, int Bk, int D,
			     const int32_t *table, int kv_len, void *out)
{
	size_t row = (size_t)D * elem;

	for (int j = 0; j < kv_len; j++) {
		int32_t pg = table[j / Bk];
		if (pg < 0 || pg >= num_pages)
			return -1;
		for (int h = 0; h < H; h++)
			memcpy((char *)out + ((size_t)j * H + h) * row,
			       (const char *)pages + (((size_t)pg * H + h) * Bk + j % Bk) * row, row);
	}
	return 0;
}

/* Index keys: pages [num_pages, Bk, Di] -> out [kv_len, Di]. */
REF_API int ref_gather_index_pages(const void *pages, size_t elem, int num_pages, int Bk, int Di,
				   const int32_t *table, int kv_len, void *out)
{
	return ref_gather_pages(pages, elem, num_pages, 1, Bk, Di, table, kv_len, out);
}

/* The inverse, to build paged inputs: src [kv_len, H, D] -> pages. */
REF_API int ref_scatter_pages(void *pages, size_t elem, int num_pages, int H, int Bk, int D,
			      const int32_t *table, int kv_len, const void *src)
{
	size_t row = (size_t)D * elem;

	for (int j = 0; j < kv_len; j++) {
		int32_t pg = table[j / Bk];
		if (pg < 0 || pg >= num_pages)
			return -1;
		for (int h = 0; h < H; h++)
			memcpy((char *)pages + (((size_t)pg * H + h) * Bk + j % Bk) * row,
			       (const char *)src + ((size_t)j * H + h) * row, row);
	}
	return 0;
}

/* Every request of a batch: request r's table is tables + r * table_stride
 * and its keys land at rows cu_kv[r].. of out [total_kv, H, D], ready for
 * ref_index_scores / ref_sparse / ref_dense. */
REF_API int ref_gather_batch_pages(const void *pages, size_t elem, int num_pages, int H, int Bk,
				   int D, const int32_t *tables, int table_stride,
				   const ref_batch *b, void *out)
{
	if (!ref_batch_ok(b))
		return -1;
	for (int r = 0; r < b->batch; r++)
		if (ref_gather_pages(pages, elem, num_pages, H, Bk, D,
				     tables + (size_t)r * table_stride, ref_kv_len(b, r),
				     (char *)out + (size_t)b->cu_kv[r] * H * D * elem))
			return -1;
	return 0;
}

/* --------------------------------------------------------------- errors
 *
 * Positions where ref and got hold the same infinity (lse of an empty row)
 * count as exact.  A NaN anywhere, or an infinity in got where ref has
 * none, makes the error NaN or inf: test with err <= tol, never with
 * !(err > tol). */

/* ||got - ref||_2 / ||ref||_2, or ||got - ref||_2 when ref is all zero. */
REF_API double ref_rel_err(const double *ref, const double *got, size_t n)
{
	double num = 0.0, den = 0.0;

	for (size_t i = 0; i < n; i++) {
		double d = ref[i] == got[i] ? 0.0 : got[i] - ref[i];
		num += d * d;
		if (isfinite(ref[i]))
			den += ref[i] * ref[i];
	}
	return den > 0.0 ? sqrt(num) / sqrt(den) : sqrt(num);
}

REF_API double ref_max_abs_err(const double *ref, const double *got, size_t n)
{
	double m = 0.0;

	for (size_t i = 0; i < n; i++) {
		double d = ref[i] == got[i] ? 0.0 : fabs(got[i] - ref[i]);
		if (isnan(d))
			return NAN;
		if (d > m)
			m = d;
	}
	return m;
}

REF_API int ref_all_finite(const double *x, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!isfinite(x[i]))
			return 0;
	return 1;
}

REF_API int ref_all_finite_f(const float *x, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!isfinite(x[i]))
			return 0;
	return 1;
}

#endif

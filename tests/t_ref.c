/* t_ref.c - tests of the CPU reference (ref.h), so GPU tests can trust it.
 * CPU only: known values, hand-computed cases and cross-checks against
 * independent formulations (compiler _Float16, sort-based top-k). */
#include "tap.h"
#include "ref.h"

#include <float.h>

static int close_to(double got, double want, double tol)
{
	return fabs(got - want) <= tol;
}

static float bits_f(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof f);
	return f;
}

/* The classic bit trick, as a second opinion on ref_f2bf. */
static uint16_t bf_trick(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof u);
	if (isnan(f))
		return (uint16_t)(u >> 16 | 0x40);
	return (uint16_t)((u + 0x7fffu + (u >> 16 & 1)) >> 16);
}

static void test_bf16(void)
{
	ref_rng rng = ref_rng_new(1);
	int bad = 0;

	is_int(ref_f2bf(1.0f), 0x3f80, "bf16(1.0) = 0x3f80");
	is_int(ref_f2bf(3.140625f), 0x4049, "bf16(3.140625) = 0x4049");
	ok(ref_bf2f(0x4049) == 3.140625f, "bf16 3.140625 round-trips exactly");
	is_int(ref_f2bf(3.14159265f), 0x4049, "bf16(pi) rounds to 3.140625");
	is_int(ref_f2bf(1.0f + 0x1p-8f), 0x3f80, "bf16 tie rounds to even (down)");
	is_int(ref_f2bf(1.0f + 3 * 0x1p-8f), 0x3f82, "bf16 tie rounds to even (up)");
	is_int(ref_f2bf(-2.0f), 0xc000, "bf16(-2) = 0xc000");
	is_int(ref_f2bf(FLT_MAX), 0x7f80, "bf16(FLT_MAX) overflows to inf");
	is_int(ref_f2bf(-INFINITY), 0xff80, "bf16(-inf) = 0xff80");
	ok(isnan(ref_bf2f(ref_f2bf(NAN))) && isnan(ref_bf2f(ref_f2bf(bits_f(0x7f800001u)))),
	   "bf16 keeps NaN, even one with only low payload bits");
	is_int(ref_f2bf(bits_f(0x00000001u)), 0x0000, "bf16 of the smallest float subnormal is 0");
	for (int i = 0; i < 1000000; i++) {
		uint32_t u = (uint32_t)ref_next(&rng);
		if (ref_f2bf(bits_f(u)) != bf_trick(bits_f(u)))
			bad++;
	}
	is_int(bad, 0, "bf16 agrees with the bit trick on 1e6 random bit patterns");
}

static void test_half(void)
{
	int bad = 0;

	is_int(ref_f2h(1.0f), 0x3c00, "half(1.0) = 0x3c00");
	is_int(ref_f2h(65504.0f), 0x7bff, "half(65504) = 0x7bff (max)");
	is_int(ref_f2h(65519.0f), 0x7bff, "half(65519) rounds down to max");
	is_int(ref_f2h(65520.0f), 0x7c00, "half(65520) overflows to inf");
	is_int(ref_f2h(-1e6f), 0xfc00, "half(-1e6) = -inf");
	is_int(ref_f2h(1e-8f), 0x0000, "half(1e-8) underflows to 0 (below 2^-25)");
	is_int(ref_f2h(6e-8f), 0x0001, "half(6e-8) = smallest subnormal");
	is_int(ref_f2h(1e-5f), 0x00a8, "half(1e-5) = subnormal 168 * 2^-24");
	is_int(ref_f2h(0x1p-25f), 0x0000, "half(2^-25) ties to even 0");
	ok(ref_h2f(0x0001) == 0x1p-24f && ref_h2f(0x0400) == 0x1p-14f && ref_h2f(0xc000) == -2.0f,
	   "half decodes subnormal, smallest normal, negative");
	ok(isinf(ref_h2f(0x7c00)) && isnan(ref_h2f(0x7e00)) && isnan(ref_h2f(ref_f2h(NAN))),
	   "half decodes inf and NaN; NaN stays NaN");
	for (uint32_t h = 0; h < 0x10000; h++)
		if ((h & 0x7c00) != 0x7c00 || !(h & 0x3ff))	/* all but NaN */
			bad += ref_f2h(ref_h2f((uint16_t)h)) != h;
	is_int(bad, 0, "every non-NaN half round-trips");
#ifdef __FLT16_MANT_DIG__
	{
		ref_rng rng = ref_rng_new(2);
		bad = 0;
		for (int i = 0; i < 1000000; i++) {
			float f = bits_f((uint32_t)ref_next(&rng));
			_Float16 c = (_Float16)f;
			uint16_t hb;
			memcpy(&hb, &c, sizeof hb);
			if (isnan(f) ? !isnan(ref_h2f(ref_f2h(f))) : ref_f2h(f) != hb)
				bad++;
		}
		/* Bias toward the half range, where rounding matters. */
		for (int i = 0; i < 1000000; i++) {
			float f = (float)(ldexp(ref_uniform(&rng), ref_randint(&rng, -26, 17)));
			_Float16 c = (_Float16)f;
			uint16_t hb;
			memcpy(&hb, &c, sizeof hb);
			bad += ref_f2h(f) != hb;
		}
		is_int(bad, 0, "half agrees with the compiler's _Float16 on 2e6 values");
	}
#else
	skip(1, "no _Float16 in this compiler");
#endif
}

static void test_e4m3(void)
{
	int bad = 0;

	is_int(ref_f2e4m3(448.0f), 0x7e, "e4m3(448) = 0x7e");
	is_int(ref_f2e4m3(0.015625f), 0x08, "e4m3(2^-6) = 0x08, smallest normal");
	is_int(ref_f2e4m3(0x1p-9f), 0x01, "e4m3(2^-9) = 0x01, smallest subnormal");
	is_int(ref_f2e4m3(0x1p-10f), 0x00, "e4m3(2^-10) ties to even 0");
	is_int(ref_f2e4m3(3 * 0x1p-10f), 0x02, "e4m3(3*2^-10) ties to even 0x02");
	is_int(ref_f2e4m3(0.0f), 0x00, "e4m3(0) = 0x00");
	is_int(ref_f2e4m3(-0.0f), 0x80, "e4m3(-0) = 0x80");
	is_int(ref_f2e4m3(1.0f), 0x38, "e4m3(1) = 0x38");
	is_int(ref_f2e4m3(-1.0f), 0xb8, "e4m3(-1) = 0xb8");
	is_int(ref_f2e4m3(1.0625f), 0x38, "e4m3(1.0625) ties down to 1");
	is_int(ref_f2e4m3(1.1875f), 0x3a, "e4m3(1.1875) ties up to 1.25");
	is_int(ref_f2e4m3(-0.3f), 0xaa, "e4m3(-0.3) = -0.3125 = 0xaa");
	ok(ref_f2e4m3(464.0f) == 0x7e && ref_f2e4m3(470.0f) == 0x7e,
	   "e4m3(464) ties to 448; 470 would round to 480 (the NaN code) and saturates");
	is_int(ref_f2e4m3(-1000.0f), 0xfe, "e4m3(-1000) saturates to -448");
	is_int(ref_f2e4m3(INFINITY), 0x7e, "e4m3(inf) saturates to 448");
	ok(ref_f2e4m3(NAN) == 0x7f && ref_f2e4m3(-NAN) == 0xff, "e4m3(NaN) = 0x7f / 0xff");
	ok(isnan(ref_e4m3_2f(0x7f)) && isnan(ref_e4m3_2f(0xff)) && ref_e4m3_2f(0x7e) == 448.0f &&
	   ref_e4m3_2f(0xfe) == -448.0f && ref_e4m3_2f(0x01) == 0x1p-9f,
	   "e4m3 decodes NaN, +-448, smallest subnormal");
	for (int b = 0; b < 256; b++)
		if ((b & 0x7f) != 0x7f)
			bad += ref_f2e4m3(ref_e4m3_2f((uint8_t)b)) != b;
	is_int(bad, 0, "every non-NaN e4m3 round-trips");
	bad = 0;
	for (int b = 0; b < 0x7e; b++) {	/* midpoints between neighbours tie to even */
		float mid = (ref_e4m3_2f((uint8_t)b) + ref_e4m3_2f((uint8_t)(b + 1))) / 2;
		bad += ref_f2e4m3(mid) != ((b & 1) ? b + 1 : b);
	}
	is_int(bad, 0, "every e4m3 midpoint rounds to the even neighbour");
}

static void test_rng(void)
{
	ref_rng a = ref_rng_new(42), b = ref_rng_new(42), c = ref_rng_new(43);
	int same = 1, inrange = 1, lo = 0, hi = 0;
	double mean = 0.0;

	for (int i = 0; i < 100; i++)
		same &= ref_next(&a) == ref_next(&b);
	ok(same && ref_next(&a) != ref_next(&c), "rng: same seed same stream, other seed differs");
	for (int i = 0; i < 100000; i++) {
		double u = ref_uniform(&a);
		int r = ref_randint(&a, -3, 5);
		inrange &= u >= -1.0 && u < 1.0 && r >= -3 && r <= 5;
		lo += r == -3;
		hi += r == 5;
		mean += u;
	}
	ok(inrange && lo && hi && fabs(mean / 100000) < 0.01,
	   "rng: uniform in [-1,1) with mean ~0; randint covers [lo, hi]");
}

/* ---------------------------------------------------------------- dense */

static void test_dense_hand(void)
{
	/* 1 query, 2 keys, D = 2, scale 1: logits 1 and 0. */
	int cq[] = { 0, 1 }, ck[] = { 0, 2 };
	ref_batch b = { 1, cq, ck };
	double q[] = { 1, 0 }, k[] = { 1, 0, 0, 1 }, v[] = { 1, 2, 3, 4 };
	double out[2], lse, e = exp(1.0);

	ref_dense(&b, q, k, v, 1, 1, 2, 1, 1.0, out, &lse);
	ok(close_to(lse, log(e + 1), 1e-15), "dense: lse = log(e + 1)");
	ok(close_to(out[0], (e * 1 + 3) / (e + 1), 1e-15) && close_to(out[1], (e * 2 + 4) / (e + 1), 1e-15),
	   "dense: out = (e v0 + v1) / (e + 1)");
	ref_dense(&b, q, k, v, 1, 1, 2, 0, 0.5, out, &lse);
	ok(close_to(lse, log(exp(0.5) + 1), 1e-15), "dense: scale applies to the logits");
}

static void test_dense_causal(void)
{
	/* Request 0: q_len = kv_len = 3.  Request 1: q_len 2, kv_len 5. */
	int cq[] = { 0, 3, 5 }, ck[] = { 0, 3, 8 };
	ref_batch b = { 2, cq, ck };
	ref_rng rng = ref_rng_new(7);
	double q[5 * 2], k[8 * 2], v[8 * 2], out[5 * 2], lse[5], o2[2], l2, o3[2], l3;
	int cq1[] = { 0, 1 }, ck1[] = { 0, 4 };
	ref_batch b1 = { 1, cq1, ck1 };

	for (int x = 0; x < 16; x++) {
		k[x] = ref_uniform(&rng);
		v[x] = ref_uniform(&rng);
	}
	for (int x = 0; x < 10; x++)
		q[x] = ref_uniform(&rng);
	ref_dense(&b, q, k, v, 1, 1, 2, 1, 0.7, out, lse);
	ok(out[0] == v[0] && out[1] == v[1] && close_to(lse[0], 0.7 * (q[0] * k[0] + q[1] * k[1]), 1e-15),
	   "causal: query 0 of a kv_len = q_len request sees only key 0");
	/* Query 3 (request 1, i = 0) sits at p = 3: keys 3..6 of the batch. */
	ref_dense(&b1, q + 6, k + 6, v + 6, 1, 1, 2, 0, 0.7, o2, &l2);
	ok(out[6] == o2[0] && out[7] == o2[1] && lse[3] == l2,
	   "causal: with kv_len > q_len a query sees the prefix 0..p");
	v[7 * 2] = 1e6;		/* key 4 of request 1, after p = 3 */
	ref_dense(&b, q, k, v, 1, 1, 2, 1, 0.7, out, lse);
	ok(out[6] == o2[0] && lse[3] == l2, "causal: a key after p has no effect");
	ref_dense(&b1, q + 8, k + 6, v + 6, 1, 1, 2, 0, 0.7, o3, &l3);
	ok(out[8] != o3[0], "causal: the last query does see the last key");
}

static void test_dense_empty_gqa(void)
{
	/* Request 0 has kv_len 0; request 1 has q_len 3 > kv_len 1, so its
	 * first two queries sit at p < 0 and see nothing either. */
	int cq[] = { 0, 2, 5 }, ck[] = { 0, 0, 1 };
	ref_batch b = { 2, cq, ck };
	double q[5 * 4 * 1], k[1 * 2], v[1 * 2] = { 3, 7 }, out[5 * 4], lse[5 * 4];
	int empty = 1, gqa;

	for (int x = 0; x < 20; x++)
		q[x] = x;
	k[0] = k[1] = 1;
	ref_dense(&b, q, k, v, 4, 2, 1, 0, 1.0, out, lse);
	for (int x = 0; x < 8; x++)
		empty &= out[x] == 0.0 && lse[x] == -INFINITY;
	ok(empty, "non-causal over kv_len 0: out 0, lse -inf");
	/* Hq 4, Hkv 2: heads 0,1 read kv head 0 (v = 3), heads 2,3 kv head 1 (v = 7). */
	gqa = out[8] == 3 && out[9] == 3 && out[10] == 7 && out[11] == 7;
	ok(gqa, "GQA: head hq reads kv head hq / (Hq / Hkv)");
	ref_dense(&b, q, k, v, 4, 2, 1, 1, 1.0, out, lse);
	empty = 1;
	for (int x = 8; x < 16; x++)
		empty &= out[x] == 0.0 && lse[x] == -INFINITY;
	ok(empty && out[16] == 3 && out[19] == 7 && lse[16] == 16.0,
	   "causal with p < 0: nothing visible; the query at p = 0 sees key 0");
	ok(ref_dense(&b, q, k, v, 3, 2, 1, 1, 1.0, out, lse) == -1, "dense rejects Hq not a multiple of Hkv");
}

/* --------------------------------------------------------------- sparse */

typedef struct problem {
	int batch, Hq, Hkv, D, Bk;
	int cq[5], ck[5];
	ref_batch b;
	double *q, *k, *v, *out, *lse, *out2, *lse2;
} problem;

static void problem_new(problem *pb, ref_rng *rng, int batch, int Hq, int Hkv, int D, int Bk)
{
	int tq, tk;

	memset(pb, 0, sizeof *pb);
	pb->batch = batch;
	pb->Hq = Hq;
	pb->Hkv = Hkv;
	pb->D = D;
	pb->Bk = Bk;
	for (int r = 0; r < batch; r++) {
		int kvl = ref_randint(rng, 1, 5 * Bk + 3);
		int ql = ref_randint(rng, 1, kvl);
		pb->cq[r + 1] = pb->cq[r] + ql;
		pb->ck[r + 1] = pb->ck[r] + kvl;
	}
	pb->b = (ref_batch){ batch, pb->cq, pb->ck };
	tq = pb->cq[batch];
	tk = pb->ck[batch];
	pb->q = malloc(sizeof(double) * (size_t)tq * Hq * D);
	pb->k = malloc(sizeof(double) * (size_t)tk * Hkv * D);
	pb->v = malloc(sizeof(double) * (size_t)tk * Hkv * D);
	pb->out = malloc(sizeof(double) * (size_t)tq * Hq * D);
	pb->out2 = malloc(sizeof(double) * (size_t)tq * Hq * D);
	pb->lse = malloc(sizeof(double) * (size_t)tq * Hq);
	pb->lse2 = malloc(sizeof(double) * (size_t)tq * Hq);
	if (!pb->q || !pb->k || !pb->v || !pb->out || !pb->out2 || !pb->lse || !pb->lse2)
		bail("out of memory");
	for (size_t x = 0; x < (size_t)tq * Hq * D; x++)
		pb->q[x] = 2 * ref_uniform(rng);
	for (size_t x = 0; x < (size_t)tk * Hkv * D; x++) {
		pb->k[x] = ref_uniform(rng);
		pb->v[x] = ref_uniform(rng);
	}
}

static void problem_free(problem *pb)
{
	free(pb->q);
	free(pb->k);
	free(pb->v);
	free(pb->out);
	free(pb->out2);
	free(pb->lse);
	free(pb->lse2);
}

static void test_sparse(void)
{
	ref_rng rng = ref_rng_new(11);
	problem pb;
	int tq, nbm, topk, worst_ok = 1;
	int32_t *ids;
	size_t no, nl;

	for (int trial = 0; trial < 20; trial++) {
		problem_new(&pb, &rng, 4, 4, 2, 8, 4);
		tq = ref_total_q(&pb.b);
		nbm = ref_nb_max(&pb.b, pb.Bk);
		topk = nbm + 2;	/* every block, then -1 and a duplicate */
		ids = malloc(sizeof *ids * (size_t)pb.Hkv * tq * topk);
		for (int g = 0; g < pb.Hkv; g++)
			for (int t = 0; t < tq; t++) {
				int32_t *row = ids + ((size_t)g * tq + t) * topk;
				for (int s = 0; s < nbm; s++)
					row[s] = nbm - 1 - s;	/* order must not matter */
				row[nbm] = -1;
				row[nbm + 1] = 0;
			}
		no = (size_t)tq * pb.Hq * pb.D;
		nl = (size_t)tq * pb.Hq;
		ref_dense(&pb.b, pb.q, pb.k, pb.v, pb.Hq, pb.Hkv, pb.D, 1, 0.35, pb.out, pb.lse);
		ref_sparse(&pb.b, pb.q, pb.k, pb.v, ids, pb.Hq, pb.Hkv, pb.D, pb.Bk, topk, 0.35,
			   pb.out2, pb.lse2);
		worst_ok &= ref_rel_err(pb.out, pb.out2, no) <= 1e-13 &&
			    ref_max_abs_err(pb.lse, pb.lse2, nl) <= 1e-13;
		free(ids);
		problem_free(&pb);
	}
	ok(worst_ok, "sparse with every block selected (and -1, duplicates) = causal dense, 20 ragged batches");
}

static void test_sparse_subset(void)
{
	/* One request, kv_len 10, q_len 3 (p = 7, 8, 9), Bk 4: blocks 0..2. */
	int cq[] = { 0, 3 }, ck[] = { 0, 10 };
	int cq1[] = { 0, 1 }, ck1[] = { 0, 4 }, ck2[] = { 0, 2 };
	ref_batch b = { 1, cq, ck }, b1 = { 1, cq1, ck1 }, b2 = { 1, cq1, ck2 };
	ref_rng rng = ref_rng_new(5);
	double q[3 * 2 * 3], k[10 * 1 * 3], v[10 * 1 * 3], out[3 * 2 * 3], lse[6], o[2 * 3], l[2];
	int32_t ids[3 * 2];
	int same = 1;

	for (int x = 0; x < 30; x++) {
		k[x] = ref_uniform(&rng);
		v[x] = ref_uniform(&rng);
	}
	for (int x = 0; x < 18; x++)
		q[x] = ref_uniform(&rng);
	/* query 0: block 0 only; query 1: -1s; query 2: blocks 2 (keys 8, 9) */
	ids[0] = 0; ids[1] = -1;
	ids[2] = -1; ids[3] = -1;
	ids[4] = 2; ids[5] = 7;	/* 7 is past the request: adds nothing */
	ref_sparse(&b, q, k, v, ids, 2, 1, 3, 4, 2, 0.5, out, lse);
	ref_dense(&b1, q, k, v, 2, 1, 3, 0, 0.5, o, l);
	for (int x = 0; x < 6; x++)
		same &= out[x] == o[x];
	ok(same && lse[0] == l[0] && lse[1] == l[1], "sparse over block 0 = dense over keys 0..3");
	ok(out[6] == 0 && out[11] == 0 && lse[2] == -INFINITY && lse[3] == -INFINITY,
	   "sparse with no block selected: out 0, lse -inf");
	ref_dense(&b2, q + 12, k + 24, v + 24, 2, 1, 3, 0, 0.5, o, l);
	same = 1;
	for (int x = 0; x < 6; x++)
		same &= out[12 + x] == o[x];
	ok(same && lse[4] == l[0], "sparse over the partial last block = dense over keys 8..9");
	/* Query 0 (p = 7) selecting block 2 (keys 8, 9): all in its future. */
	ids[0] = 2;
	ref_sparse(&b, q, k, v, ids, 2, 1, 3, 4, 2, 0.5, out, lse);
	ok(out[0] == 0 && lse[0] == -INFINITY, "sparse: a selected future block is masked away");
}

/* ---------------------------------------------------------- index, top-k */

static void test_index_scores(void)
{
	/* Request 0: kv 7, q 2 (p = 5, 6); request 1: kv 3, q 1 (p = 2).
	 * Di 1, Bk 2, Hi 2 (qi = +1 and -1): scores are +-key values. */
	int cq[] = { 0, 2, 3 }, ck[] = { 0, 7, 10 };
	ref_batch b = { 2, cq, ck };
	double ki[] = { 1, 5, 2, 3, -1, 4, 9, 6, 8, 7 }, qi[] = { 1, -1, 1, -1, 1, -1 };
	double sc[2 * 3 * 4];
	int nb = ref_nb_max(&b, 2);

	is_int(nb, 4, "nb_max = ceil(7 / 2)");
	ref_index_scores(&b, qi, ki, 2, 1, 2, sc);
	ok(sc[0] == 5 && sc[1] == 3 && sc[2] == 4 && sc[3] == -INFINITY,
	   "index: p = 5 takes the block max; key 6 (block 3) is in its future");
	ok(sc[4] == 5 && sc[5] == 3 && sc[6] == 4 && sc[7] == 9, "index: p = 6 sees block 3");
	ok(sc[8] == 8 && sc[9] == 7 && sc[10] == -INFINITY && sc[11] == -INFINITY,
	   "index: blocks past the request's own length are -inf");
	ok(sc[12] == -1 && sc[13] == -2 && sc[14] == 1 && sc[15] == -INFINITY,
	   "index: head 1 (qi = -1) maxes the negated keys");
	ok(sc[20] == -6 && sc[21] == -7 && sc[22] == -INFINITY, "index: heads are independent");
}

/* Runs ref_topk on one row of scores for a single request whose last query
 * sees n blocks (q_len 1, kv_len n * Bk with Bk 1). */
static int topk1(const double *scores, int n, int k, int L, int S, int32_t *ids)
{
	int cq[] = { 0, 1 }, ck[] = { 0, n };
	ref_batch b = { 1, cq, ck };

	return ref_topk(scores, &b, 1, 1, k, L, S, ids);
}

static int ids_are(const int32_t *ids, int k, const int *want)
{
	for (int s = 0; s < k; s++)
		if (ids[s] != want[s]) {
			diag("slot %d: got %d, want %d", s, (int)ids[s], want[s]);
			return 0;
		}
	return 1;
}

static void test_topk_rules(void)
{
	double sc[8] = { 0.5, 9, 3, 3, 7, -2, 3, 1 };
	int32_t ids[8];

	topk1(sc, 3, 5, 1, 0, ids);
	ok(ids_are(ids, 5, (int[]){ 0, 1, 2, -1, -1 }), "top-k: n <= k gives 0..n-1 ascending, then -1");
	topk1(sc, 4, 4, 1, 1, ids);
	ok(ids_are(ids, 4, (int[]){ 0, 1, 2, 3 }), "top-k: n == k takes all, ignoring scores");
	topk1(sc, 8, 4, 1, 0, ids);
	ok(ids_are(ids, 4, (int[]){ 1, 4, 2, 7 }),
	   "top-k: descending scores, ties to the lower id, local block n-1 (score 1) in slot k-1");
	topk1(sc, 7, 5, 1, 0, ids);
	ok(ids_are(ids, 5, (int[]){ 1, 4, 2, 3, 6 }), "top-k: tied blocks 2 and 3 fill in id order, local 6 last");
	topk1(sc, 8, 4, 1, 1, ids);
	ok(ids_are(ids, 4, (int[]){ 0, 1, 4, 7 }), "top-k: sink block 0 in slot 0 despite a low score");
	topk1(sc, 8, 4, 0, 0, ids);
	ok(ids_are(ids, 4, (int[]){ 1, 4, 2, 3 }), "top-k: local_blocks = 0 forces no local block");
	sc[7] = 8;
	topk1(sc, 8, 4, 0, 2, ids);
	ok(ids_are(ids, 4, (int[]){ 0, 1, 7, 4 }),
	   "top-k: local_blocks = 0 with sinks: sinks 0,1 then block 7 ranked among the rest");
	topk1(sc, 8, 3, 1, 2, ids);
	ok(ids_are(ids, 3, (int[]){ 0, 1, 7 }), "top-k: S + L = k leaves only forced slots");
	ok(topk1(sc, 8, 2, 1, 2, ids) == -1 && topk1(sc, 8, 2, 2, 0, ids) == -1,
	   "top-k rejects S + L > k and local_blocks outside 0/1");
	sc[0] = NAN;	/* first candidate: a plain > would never displace it */
	topk1(sc, 8, 4, 1, 0, ids);
	ok(ids_are(ids, 4, (int[]){ 1, 4, 2, 7 }), "top-k: NaN ranks as -inf");
}

static const double *cmp_scores;

/* Sort-based order: descending score, then ascending id. */
static int cmp_rank(const void *a, const void *b)
{
	int x = *(const int *)a, y = *(const int *)b;

	if (cmp_scores[x] != cmp_scores[y])
		return cmp_scores[x] > cmp_scores[y] ? -1 : 1;
	return x - y;
}

/* An independent top-k for a row: sort the candidates, take the best. */
static void topk_sorted(const double *score, int n, int k, int L, int S, int32_t *out)
{
	int cand[64], nc = 0, slot = 0;

	for (int s = 0; s < k; s++)
		out[s] = -1;
	if (n <= k) {
		for (int x = 0; x < n; x++)
			out[x] = x;
		return;
	}
	for (int x = S; x < n - L; x++)
		cand[nc++] = x;
	cmp_scores = score;
	qsort(cand, (size_t)nc, sizeof cand[0], cmp_rank);
	for (int x = 0; x < S; x++)
		out[slot++] = x;
	for (int x = 0; slot < k - L; x++)
		out[slot++] = cand[x];
	if (L)
		out[k - 1] = n - 1;
}

static void test_topk_random(void)
{
	ref_rng rng = ref_rng_new(99);
	int cq[] = { 0, 0, 0, 0 }, ck[] = { 0, 0, 0, 0 }, bad = 0, Bk = 4, Hi = 2;
	ref_batch b = { 3, cq, ck };

	for (int trial = 0; trial < 300 && !bad; trial++) {
		int k = ref_randint(&rng, 1, 8), L = ref_randint(&rng, 0, 1);
		int S = ref_randint(&rng, 0, k - L), tq, nbm;
		double *sc;
		int32_t *ids, want[8];
		for (int r = 0; r < 3; r++) {
			int kvl = ref_randint(&rng, 1, 60), ql = ref_randint(&rng, 1, kvl < 9 ? kvl : 9);
			ck[r + 1] = ck[r] + kvl;
			cq[r + 1] = cq[r] + ql;
		}
		tq = ref_total_q(&b);
		nbm = ref_nb_max(&b, Bk);
		sc = malloc(sizeof *sc * (size_t)Hi * tq * nbm);
		ids = malloc(sizeof *ids * (size_t)Hi * tq * k);
		for (int x = 0; x < Hi * tq * nbm; x++)	/* small integers: many ties */
			sc[x] = ref_randint(&rng, -3, 3);
		ref_topk(sc, &b, Hi, Bk, k, L, S, ids);
		for (int r = 0; r < 3; r++)
			for (int i = 0; i < ref_q_len(&b, r); i++)
				for (int h = 0; h < Hi; h++) {
					size_t t = (size_t)cq[r] + i;
					int n = ref_visible_blocks(ref_pos(&b, r, i), Bk);
					topk_sorted(sc + (h * tq + t) * nbm, n, k, L, S, want);
					for (int s = 0; s < k; s++)
						bad += ids[(h * tq + t) * k + s] != want[s];
				}
		free(sc);
		free(ids);
	}
	is_int(bad, 0, "top-k matches a sort-based top-k on 300 random tie-heavy batches");
}

static void test_topk_check(void)
{
	/* Two requests so the check walks rows; Bk 1, Hi 1, k 3, L 1. */
	int cq[] = { 0, 1, 2 }, ck[] = { 0, 6, 8 };
	ref_batch b = { 2, cq, ck };
	double sc[2 * 6] = { 5, 4.0, 3.9999, 1, 2, 0, 7, 6, -INFINITY, -INFINITY, -INFINITY, -INFINITY };
	int32_t ids[2 * 3];
	char msg[256];

	ref_topk(sc, &b, 1, 1, 3, 1, 0, ids);
	ok(ids_are(ids, 6, (int[]){ 0, 1, 5, 0, 1, -1 }), "check fixture: reference ids");
	ok(ref_topk_check(ids, sc, &b, 1, 1, 3, 1, 0, msg, sizeof msg) && msg[0] == '\0',
	   "topk_check accepts the reference");
	ids[1] = 2;	/* 3.9999 instead of 4.0 */
	ok(!ref_topk_check(ids, sc, &b, 1, 1, 3, 1, 0, msg, sizeof msg), "topk_check rejects a near-tie swap");
	like(msg, "query 0 group 0 slot 1: got 2, want 1", "topk_check names query, group, slot, got, want");
	ok(ref_topk_equivalent(ids, sc, &b, 1, 1, 3, 1, 0, 1e-3, 0, msg, sizeof msg),
	   "topk_equivalent accepts the near-tie pick within rel 1e-3");
	ok(!ref_topk_equivalent(ids, sc, &b, 1, 1, 3, 1, 0, 1e-6, 0, msg, sizeof msg),
	   "topk_equivalent rejects it within rel 1e-6");
	ids[0] = 1;
	ids[1] = 0;	/* wrong order: 4 before 5 */
	ok(!ref_topk_equivalent(ids, sc, &b, 1, 1, 3, 1, 0, 1e-3, 0, msg, sizeof msg),
	   "topk_equivalent rejects a descending-order violation");
	ids[0] = 0;
	ids[1] = 0;
	ok(!ref_topk_equivalent(ids, sc, &b, 1, 1, 3, 1, 0, 1, 10, msg, sizeof msg),
	   "topk_equivalent rejects a duplicate however loose");
	like(msg, "duplicate", "the message says why");
	ids[1] = 5;
	ok(!ref_topk_equivalent(ids, sc, &b, 1, 1, 3, 1, 0, 1, 10, msg, sizeof msg),
	   "topk_equivalent rejects the local block in a ranked slot");
	ids[1] = 1;
	ids[5] = 1;	/* n <= k rows must be exact: slot 2 must stay -1 */
	ok(!ref_topk_equivalent(ids, sc, &b, 1, 1, 3, 1, 0, 1, 10, msg, sizeof msg),
	   "topk_equivalent wants the exact answer when n <= k");
	like(msg, "query 1 group 0 slot 2", "and points at it");
}

/* ----------------------------------------------------------------- pages */

static void test_pages(void)
{
	enum { H = 2, BK = 4, D = 3, NP = 6 };
	int32_t table[] = { 4, 0, 5, 2 };	/* kv_len 14: 4 pages, last partial */
	int kvl = 14, same = 1, idx = 1;
	double src[14 * H * D], pages[NP * H * BK * D], out[14 * H * D];
	double isrc[14 * D], ipages[NP * BK * D], iout[14 * D];

	for (int x = 0; x < NP * H * BK * D; x++)
		pages[x] = -1;
	for (int x = 0; x < kvl * H * D; x++)
		src[x] = x;
	/* Written out by hand, not with ref_scatter_pages. */
	for (int j = 0; j < kvl; j++)
		for (int h = 0; h < H; h++)
			for (int d = 0; d < D; d++)
				pages[((table[j / BK] * H + h) * BK + j % BK) * D + d] = src[(j * H + h) * D + d];
	ok(ref_gather_pages(pages, sizeof(double), NP, H, BK, D, table, kvl, out) == 0 &&
	   memcmp(out, src, sizeof src) == 0, "gather_pages with a shuffled table reconstructs the keys");
	for (int x = 0; x < kvl * D; x++)
		isrc[x] = 100 + x;
	for (int j = 0; j < kvl; j++)
		for (int d = 0; d < D; d++)
			ipages[(table[j / BK] * BK + j % BK) * D + d] = isrc[j * D + d];
	ok(ref_gather_index_pages(ipages, sizeof(double), NP, BK, D, table, kvl, iout) == 0 &&
	   memcmp(iout, isrc, sizeof isrc) == 0, "gather_index_pages reconstructs the index keys");
	memset(pages, 0, sizeof pages);
	ref_scatter_pages(pages, sizeof(double), NP, H, BK, D, table, kvl, src);
	for (int j = 0; j < kvl; j++)
		same &= pages[((table[j / BK] * H + 1) * BK + j % BK) * D + 2] == src[(j * H + 1) * D + 2];
	ok(same, "scatter_pages writes where gather reads");
	table[3] = NP;
	idx = ref_gather_pages(pages, sizeof(double), NP, H, BK, D, table, kvl, out);
	is_int(idx, -1, "gather_pages rejects a page outside the pool");
}

/* Decode: paged keys -> gathered -> index/top-k/sparse; with k covering
 * every block it must equal causal dense on the contiguous data. */
static void test_decode_pipeline(void)
{
	enum { BK = 4, HQ = 4, HKV = 2, D = 4, DI = 4, NP = 12, MP = 5 };
	int cq[] = { 0, 2, 3 }, ck[] = { 0, 17, 26 };	/* q_len 2 and 1 */
	ref_batch b = { 2, cq, ck };
	int32_t tables[2 * MP] = { 7, 1, 10, 3, 0, 11, 2, 5, 4, -1 };
	ref_rng rng = ref_rng_new(3);
	uint16_t kp[NP * HKV * BK * D], vp[NP * HKV * BK * D], ip[NP * BK * DI];
	double kpd[NP * HKV * BK * D], vpd[NP * HKV * BK * D], ipd[NP * BK * DI];
	double k[26 * HKV * D], v[26 * HKV * D], ki[26 * DI], q[3 * HQ * D], qi[3 * HKV * DI];
	double sc[HKV * 3 * 5], out[3 * HQ * D], lse[3 * HQ], o2[3 * HQ * D], l2[3 * HQ];
	int32_t ids[HKV * 3 * 5];

	ref_fill(&rng, REF_BF16, kp, kpd, sizeof kp / 2, 1.0);
	ref_fill(&rng, REF_BF16, vp, vpd, sizeof vp / 2, 1.0);
	ref_fill(&rng, REF_BF16, ip, ipd, sizeof ip / 2, 1.0);
	for (int x = 0; x < 3 * HQ * D; x++)
		q[x] = ref_uniform(&rng);
	for (int x = 0; x < 3 * HKV * DI; x++)
		qi[x] = ref_uniform(&rng);
	ok(ref_gather_batch_pages(kpd, sizeof(double), NP, HKV, BK, D, tables, MP, &b, k) == 0 &&
	   ref_gather_batch_pages(vpd, sizeof(double), NP, HKV, BK, D, tables, MP, &b, v) == 0 &&
	   ref_gather_batch_pages(ipd, sizeof(double), NP, 1, BK, DI, tables, MP, &b, ki) == 0 &&
	   kpd[((10 * HKV + 1) * BK + 1) * D + 2] == k[((9 * HKV) + 1) * D + 2] &&
	   ki[(17 + 6) * DI] == ipd[(2 * BK + 2) * DI] && ki[(17 + 6) * DI] == ref_bf2f(ip[(2 * BK + 2) * DI]),
	   "batch gather places each request at cu_kv, dequantised bf16");
	ref_index_scores(&b, qi, ki, HKV, DI, BK, sc);
	ref_topk(sc, &b, HKV, BK, 5, 1, 0, ids);
	ref_sparse(&b, q, k, v, ids, HQ, HKV, D, BK, 5, 0.5, out, lse);
	ref_dense(&b, q, k, v, HQ, HKV, D, 1, 0.5, o2, l2);
	ok(ref_rel_err(o2, out, sizeof out / sizeof out[0]) <= 1e-14 &&
	   ref_max_abs_err(l2, lse, sizeof lse / sizeof lse[0]) <= 1e-14,
	   "decode: k >= visible blocks makes sparse equal dense");
	ref_topk(sc, &b, HKV, BK, 2, 1, 0, ids);
	ref_sparse(&b, q, k, v, ids, HQ, HKV, D, BK, 2, 0.5, out, lse);
	ok(ids[1] == 3 && ids[0] >= 0 && ids[0] < 3 && ref_all_finite(out, sizeof out / sizeof out[0]) &&
	   ref_rel_err(o2, out, sizeof out / sizeof out[0]) > 1e-3,
	   "decode: k = 2 keeps the local block and differs from dense");
}

/* ---------------------------------------------------------------- errors */

static void test_errors(void)
{
	double r[] = { 3, 4, -INFINITY }, g[] = { 3, 4 + 0.5, -INFINITY }, z[] = { 0, 0 }, gz[] = { 3, 4 };
	double gn[] = { 3, NAN, -INFINITY }, gi[] = { 3, 4, 0 };
	float f[] = { 1, 2, NAN };

	ok(close_to(ref_rel_err(r, g, 3), 0.1, 1e-15), "rel_err = ||got - ref|| / ||ref||; equal -inf is exact");
	ok(ref_rel_err(z, gz, 2) == 5.0, "rel_err over a zero reference is ||got||");
	ok(!(ref_rel_err(r, gn, 3) <= 1.0) && !(ref_max_abs_err(r, gn, 3) <= 1.0),
	   "a NaN in got fails any tolerance");
	ok(!(ref_rel_err(r, gi, 3) <= 1.0) && !(ref_max_abs_err(r, gi, 3) <= 1.0),
	   "a finite got where ref is -inf fails any tolerance");
	ok(ref_max_abs_err(r, g, 3) == 0.5, "max_abs_err");
	ok(ref_all_finite(r, 2) && !ref_all_finite(r, 3) && !ref_all_finite(gn, 2) &&
	   ref_all_finite_f(f, 2) && !ref_all_finite_f(f, 3), "all_finite spots NaN and inf");
}

int main(void)
{
	plan(104);
	test_bf16();
	test_half();
	test_e4m3();
	test_rng();
	test_dense_hand();
	test_dense_causal();
	test_dense_empty_gqa();
	test_sparse();
	test_sparse_subset();
	test_index_scores();
	test_topk_rules();
	test_topk_random();
	test_topk_check();
	test_pages();
	test_decode_pipeline();
	test_errors();
	return done_testing();
}

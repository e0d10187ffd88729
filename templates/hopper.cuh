// hopper.cuh - sm_90a building blocks: mbarriers, TMA tile loads and the
// warpgroup matrix instructions (wgmma) with their shared-memory descriptors.
//
// Tiles live in shared memory as TMA writes them with the 128-byte swizzle:
// a [rows][64] 16-bit atom per 64 columns, row r at r * 128 bytes, 16-byte
// chunk c stored at chunk c ^ (r % 8); atoms of one tile follow each other.
// Every atom starts on a 1024-byte boundary, which the swizzle needs.
#pragma once
#include "common.cuh"

// The 16-bit operand type of the wgmma wrappers; a template may set it
// (from another dtype) before including this file.
#ifndef WG_AB
#if MSA_DT_Q == 1
#define WG_AB "f16.f16"
#else
#define WG_AB "bf16.bf16"
#endif
#endif

// A CUtensorMap as the driver encodes it: 128 opaque bytes.
struct __align__(64) tmap_t {
	u64 w[16];
};

__device__ __forceinline__ void mbar_init(u32 bar, int count)
{
	asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" :: "r"(bar), "r"(count));
}

__device__ __forceinline__ void mbar_expect_tx(u32 bar, u32 bytes)
{
	asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" :: "r"(bar), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_arrive(u32 bar)
{
	asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" :: "r"(bar) : "memory");
}

// Wait until the phase with this parity has completed.
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity)
{
	asm volatile("{\n.reg .pred done;\nWAIT:\n"
		     "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
		     "@!done bra WAIT;\n}\n" :: "r"(bar), "r"(parity) : "memory");
}

// Named barrier id (1..15) over n threads: wait for all of them, or only
// count this warp's arrival.
__device__ __forceinline__ void named_sync(int id, int n)
{
	asm volatile("bar.sync %0, %1;\n" :: "r"(id), "r"(n) : "memory");
}

__device__ __forceinline__ void named_arrive(int id, int n)
{
	asm volatile("bar.arrive %0, %1;\n" :: "r"(id), "r"(n) : "memory");
}

// One box of a 3-d tensor map into shared memory; completes on bar.
__device__ __forceinline__ void tma_load_3d(u32 dst, const tmap_t *map, u32 bar, int c0, int c1, int c2)
{
	asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
		     " [%0], [%1, {%2, %3, %4}], [%5];\n"
		     :: "r"(dst), "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(bar) : "memory");
}

__device__ __forceinline__ void tma_prefetch_map(const tmap_t *map)
{
	asm volatile("prefetch.tensormap [%0];\n" :: "l"(map) : "memory");
}

template <int N> __device__ __forceinline__ void setmaxnreg_inc()
{
	asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" :: "n"(N));
}
template <int N> __device__ __forceinline__ void setmaxnreg_dec()
{
	asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" :: "n"(N));
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait()
{
	asm volatile("wgmma.wait_group.sync.aligned %0;\n" :: "n"(N) : "memory");
}

// Keep the compiler from moving accumulator reads or writes across the
// asynchronous matrix instructions.
template <int N> __device__ __forceinline__ void reg_fence(float *d)
{
#pragma unroll
	for (int i = 0; i < N; i++)
		asm volatile("" : "+f"(d[i]) :: "memory");
}

// Shared-memory matrix descriptor, 128-byte swizzle.  K-major operands
// (rows of 64 contiguous k values): lbo unused, sbo = 1024 (8 rows).
// MN-major operands (rows of 64 contiguous m/n values, one row per k):
// lbo = bytes between 64-wide atoms along m/n, sbo = 1024 (8 k rows).
__device__ __forceinline__ u64 wg_desc(u32 addr, u32 lbo, u32 sbo)
{
	return (u64)((addr & 0x3ffff) >> 4) | (u64)((lbo >> 4) & 0x3fff) << 16 |
	       (u64)((sbo >> 4) & 0x3fff) << 32 | (u64)1 << 62;
}

// wgmma m64nNk16, fp32 accumulators d[N/2] in the mma.sync C layout per
// warp (8-column chunks: d[4c..4c+1] row lane/4, d[4c+2..4c+3] row +8).
// _ss: A and B from shared memory; _rs: A from registers in the mma.sync
// A layout.  TB 1: B is MN-major.  acc 0 overwrites d.
template <int TB>
__device__ __forceinline__ void wgmma_n64_rs(float *d, const u32 *a, u64 b, int acc = 1)
{
	asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %38, 0;\n"
		     "wgmma.mma_async.sync.aligned.m64n64k16.f32." WG_AB " "
		     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
		     "{%32, %33, %34, %35}, %36, p, 1, 1, %37;\n}\n"
		     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
		     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(TB), "r"(acc));
}

template <int TB>
__device__ __forceinline__ void wgmma_n128_ss(float *d, u64 a, u64 b, int acc)
{
	asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
		     "wgmma.mma_async.sync.aligned.m64n128k16.f32." WG_AB " "
		     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
		     "%64, %65, p, 1, 1, 0, %67;\n}\n"
		     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
		     : "l"(a), "l"(b), "r"(acc), "n"(TB));
}

template <int TB>
__device__ __forceinline__ void wgmma_n128_rs(float *d, const u32 *a, u64 b, int acc = 1)
{
	asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %70, 0;\n"
		     "wgmma.mma_async.sync.aligned.m64n128k16.f32." WG_AB " "
		     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
		     "{%64, %65, %66, %67}, %68, p, 1, 1, %69;\n}\n"
		     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
		     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(TB), "r"(acc));
}

// S (64 rows x 128 keys) = A x B^T over D: A is this warpgroup's 64 rows of
// a tile with AROWS rows per atom (a = its first row), B a 128-row tile.
template <int D, int AROWS>
__device__ __forceinline__ void wg_qk(float (&s)[16][4], u32 a, u32 b)
{
#pragma unroll
	for (int kk = 0; kk < D / 16; kk++) {
		const u32 off = (kk % 4) * 32;
		wgmma_n128_ss<0>(&s[0][0], wg_desc(a + (kk / 4) * (AROWS * 128) + off, 16, 1024),
				 wg_desc(b + (kk / 4) * (128 * 128) + off, 16, 1024), kk > 0);
	}
}

// O (64 rows x D) += P x V over BN keys: P in registers, V a [BN][D] tile
// (MN-major for this product).  acc 0: O = P V.
template <int D, int BN>
__device__ __forceinline__ void wg_pv(float (&o)[D / 8][4], const u32 (&pa)[BN / 16][4], u32 v, int acc)
{
#pragma unroll
	for (int kk = 0; kk < BN / 16; kk++) {
		const u64 db = wg_desc(v + kk * 16 * 128, BN * 128, 1024);
		if (D == 128)
			wgmma_n128_rs<1>(&o[0][0], pa[kk], db, acc || kk > 0);
		else
			wgmma_n64_rs<1>(&o[0][0], pa[kk], db, acc || kk > 0);
	}
}

// cp.async ROWS rows of COLS 16-bit values into the TMA layout above;
// rowptr(r) gives a row's global address or nullptr for a zero row.  The
// caller waits, then runs fence_async() and a barrier before any wgmma.
template <int ROWS, int COLS, int NT, typename F>
__device__ __forceinline__ void load_sw128(u32 base, const void *any, F rowptr)
{
	constexpr int CH = COLS / 8;
	for (int i = threadIdx.x % NT; i < ROWS * CH; i += NT) {
		const int r = i / CH, ch = i % CH;
		const u8 *p = (const u8 *)rowptr(r);
		const u32 dst = base + (ch / 8) * (ROWS * 128) + r * 128 + (((ch % 8) ^ (r % 8)) << 4);
		cp_async16(dst, p ? (const void *)(p + ch * 16) : any, p ? 16 : 0);
	}
}

// 16 zero bytes at a shared-memory address.
__device__ __forceinline__ void st_shared_zero16(u32 addr)
{
	asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" :: "r"(addr), "r"(0) : "memory");
}

// Make this thread's ordinary shared-memory writes visible to wgmma/TMA.
__device__ __forceinline__ void fence_async()
{
	asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// wgmma m64n128k32 on fp8 e4m3 (both operands K-major in shared memory).
__device__ __forceinline__ void wgmma_n128_e4m3(float *d, u64 a, u64 b, int acc)
{
	asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
		     "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
		     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
		     "%64, %65, p, 1, 1;\n}\n"
		     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
		     : "l"(a), "l"(b), "r"(acc));
}

// wgmma m64n128k32 on fp8 e4m3 with f16 accumulators: d[32] holds pairs
// (the f32 layout's d[2i], d[2i + 1] packed in d[i]: d[2c] row lane/4, keys
// 8c + 2(lane%4) and +1 in the low and high halves, d[2c + 1] row + 8).
__device__ __forceinline__ void wgmma_n128_e4m3_f16(u32 *d, u64 a, u64 b, int acc)
{
	asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
		     "wgmma.mma_async.sync.aligned.m64n128k32.f16.e4m3.e4m3 "
		     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
		     "%32, %33, p, 1, 1;\n}\n"
		     : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31])
		     : "l"(a), "l"(b), "r"(acc));
}

template <int N> __device__ __forceinline__ void reg_fence_u(u32 *d)
{
#pragma unroll
	for (int i = 0; i < N; i++)
		asm volatile("" : "+r"(d[i]) :: "memory");
}

// Two f16 pairs' elementwise max; a NaN wins, so it reaches the result.
__device__ __forceinline__ u32 hmax2_nan(u32 a, u32 b)
{
	u32 d;
	asm("max.NaN.f16x2 %0, %1, %2;\n" : "=r"(d) : "r"(a), "r"(b));
	return d;
}

// D (16 x 8, fp32) += A (16 x 32 e4m3, row) x B (32 x 8 e4m3, col): the
// mma.sync layouts (a[0] row lane/4, k 4(lane%4)..+3; a[1] row + 8; a[2],
// a[3] at k + 16; b[0] key lane/4, k 4(lane%4)..+3, b[1] at k + 16; d[0..1]
// row lane/4, keys 2(lane%4) and +1, d[2..3] row + 8).
__device__ __forceinline__ void mma_e4m3_f32(float *d, const u32 *a, const u32 *b)
{
	asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 "
		     "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
		     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
		     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// 4 bytes at byte kb of row r of a 128-byte-swizzled tile (rows of 128
// bytes; r counted from a 1024-byte-aligned row).
__device__ __forceinline__ u32 ld_sw128_u32(u32 tile, int r, int kb)
{
	u32 v;
	asm volatile("ld.shared.u32 %0, [%1];\n"
		     : "=r"(v)
		     : "r"(tile + r * 128 + ((((kb >> 4) ^ r) & 7) << 4) + (kb & 15)));
	return v;
}

// The low (hi = 0) or high half of an f16 pair as a float.
__device__ __forceinline__ float h2f(u32 a, int hi)
{
	float f;
	const unsigned short h = (unsigned short)(hi ? a >> 16 : a & 0xffff);
	asm("cvt.f32.f16 %0, %1;\n" : "=f"(f) : "h"(h));
	return f;
}

// |a| + |b| + |c| + |d| of four e4m3 values packed in x (NaN stays NaN).
__device__ __forceinline__ float e4m3x4_abs_sum(u32 x)
{
	u32 lo, hi;
	asm("cvt.rn.f16x2.e4m3x2 %0, %1;\n" : "=r"(lo) : "h"((unsigned short)(x & 0xffff)));
	asm("cvt.rn.f16x2.e4m3x2 %0, %1;\n" : "=r"(hi) : "h"((unsigned short)(x >> 16)));
	lo &= 0x7fff7fffu;
	hi &= 0x7fff7fffu;
	return h2f(lo, 0) + h2f(lo, 1) + h2f(hi, 0) + h2f(hi, 1);
}

// One 2-d TMA box (x = column, y = row) into shared memory; completes on bar.
__device__ __forceinline__ void tma_load_2d(u32 dst, const tmap_t *map, u32 bar, int c0, int c1)
{
	asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
		     " [%0], [%1, {%2, %3}], [%4];\n"
		     :: "r"(dst), "l"(map), "r"(c0), "r"(c1), "r"(bar) : "memory");
}

// One 2-d box from shared memory to global by TMA (bulk group); the smem
// must stay until bulk_wait_read says the copy has read it.
__device__ __forceinline__ void tma_store_2d(const tmap_t *map, u32 src, int c0, int c1)
{
	asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];\n"
		     :: "l"(map), "r"(src), "r"(c0), "r"(c1) : "memory");
}

__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }

// Every committed bulk group has read its shared memory / has completed.
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }
__device__ __forceinline__ void bulk_wait() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

__device__ __forceinline__ void st_shared_u32(u32 addr, u32 x)
{
	asm volatile("st.shared.u32 [%0], %1;\n" :: "r"(addr), "r"(x) : "memory");
}

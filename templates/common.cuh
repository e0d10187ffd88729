// common.cuh - what every msagen template shares: the spec constants (with
// defaults so a template compiles on its own), number formats and the
// warp-level matrix instructions.  No CUDA headers: NVRTC needs no include
// path and the cache key holds no path.
#pragma once

#ifndef MSA_HQ
#define MSA_HQ 8
#endif
#ifndef MSA_HKV
#define MSA_HKV 2
#endif
#ifndef MSA_D
#define MSA_D 128
#endif
#ifndef MSA_DI
#define MSA_DI 128
#endif
#ifndef MSA_BLOCK
#define MSA_BLOCK 128
#endif
#ifndef MSA_TOPK
#define MSA_TOPK 16
#endif
#ifndef MSA_LOCAL
#define MSA_LOCAL 1
#endif
#ifndef MSA_SINK
#define MSA_SINK 0
#endif
#ifndef MSA_DT_Q
#define MSA_DT_Q 0
#endif
#ifndef MSA_DT_KV
#define MSA_DT_KV 0
#endif
#ifndef MSA_DT_INDEX
#define MSA_DT_INDEX 0
#endif
#ifndef MSA_DT_OUT
#define MSA_DT_OUT 0
#endif
#ifndef MSA_CAUSAL
#define MSA_CAUSAL 1
#endif
#ifndef MSA_ARCH
#define MSA_ARCH 900
#endif
#define MSA_G (MSA_HQ / MSA_HKV)

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned char u8;
typedef unsigned long long u64;

#define MSA_INF __int_as_float(0x7f800000)

// dtype codes as in the generator: 0 bf16, 1 fp16, 2 fp8 e4m3
template <int DT> struct dtype_traits;
template <> struct dtype_traits<0> { typedef u16 T; };
template <> struct dtype_traits<1> { typedef u16 T; };
template <> struct dtype_traits<2> { typedef u8 T; };

__device__ __forceinline__ float bf16_to_f(u16 x) { return __uint_as_float((u32)x << 16); }

__device__ __forceinline__ float f16_to_f(u16 x)
{
	float f;
	asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
	return f;
}

template <int DT> __device__ __forceinline__ float to_f(u16 x)
{
	return DT == 0 ? bf16_to_f(x) : f16_to_f(x);
}

// Two floats -> one register of two 16-bit values (lo in the low half).
template <int DT> __device__ __forceinline__ u32 pack2(float lo, float hi)
{
	u32 r;
	if (DT == 0)
		asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
	else
		asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
	return r;
}

__device__ __forceinline__ float fast_exp2(float x)
{
	float y;
	asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
	return y;
}

__device__ __forceinline__ u32 smem_u32(const void *p)
{
	return (u32)__cvta_generic_to_shared(p);
}

// 16-byte async copy global -> shared; src_bytes 0 writes zeros.
__device__ __forceinline__ void cp_async16(u32 dst, const void *src, int src_bytes)
{
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
		     :: "r"(dst), "l"(src), "r"(src_bytes));
}
// 4-byte async copy global -> shared (through L1).
__device__ __forceinline__ void cp_async4(u32 dst, const void *src)
{
	asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" :: "r"(dst), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N> __device__ __forceinline__ void cp_async_wait()
{
	asm volatile("cp.async.wait_group %0;\n" :: "n"(N));
}

__device__ __forceinline__ void ldsm_x4(u32 addr, u32 &r0, u32 &r1, u32 &r2, u32 &r3)
{
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
		     : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(u32 addr, u32 &r0, u32 &r1, u32 &r2, u32 &r3)
{
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
		     : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}

// D += A(16x16, row) * B(16x8, col), fp32 accumulators.
template <int DT>
__device__ __forceinline__ void mma16816(float *d, const u32 *a, u32 b0, u32 b1)
{
	if (DT == 0)
		asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
			     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
			     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
			     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
	else
		asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
			     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
			     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
			     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Byte offset of element (row, col) in a [rows][COLS] 16-bit tile whose
// 16-byte chunks are XOR-swizzled by row, so ldmatrix of 8 rows at one
// column hits 8 different bank groups.
template <int COLS>
__device__ __forceinline__ u32 swz(int row, int col)
{
	const int chunks = COLS / 8;
	int c = (col >> 3) ^ (row & 7 & (chunks - 1));
	return (u32)((row * COLS + c * 8 + (col & 7)) * 2);
}

// Request of global token t: the last r with cu[r] <= t (an empty request
// shares its start with the next and is skipped).
__device__ __forceinline__ int find_request(const int *cu, int batch, int t)
{
	int lo = 0, hi = batch - 1;
	while (lo < hi) {
		int mid = (lo + hi + 1) / 2;
		if (cu[mid] <= t)
			lo = mid;
		else
			hi = mid - 1;
	}
	return lo;
}

// find_request for a whole warp (every lane calls it): the lanes read
// cu[1 .. batch - 1] at once and count the starts at or before t, one
// round trip where the search takes log2(batch) dependent ones.
__device__ __forceinline__ int find_request_warp(const int *cu, int batch, int t)
{
	int n = 0;
#pragma unroll 4
	for (int i = 1 + (int)threadIdx.x % 32; i < batch; i += 32)
		n += cu[i] <= t;
	return (int)__reduce_add_sync(0xffffffffu, (unsigned)n);
}

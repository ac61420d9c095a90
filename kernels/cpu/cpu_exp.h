/* cpu_exp.h - private to kernels/cpu: expf as a polynomial (Cephes' expf, as in ggml's and
 * avx_mathfun's SIMD versions), in plain C and in AVX2 with the same operations in the same
 * order (fused multiply-adds where written), so that both give the same bits: the scalar and
 * SIMD levels of an op built on it agree exactly. Within 2 ulp of expf on [-87, 88]; 0 below
 * -88.37, +inf above 88.37 (x ~ 88.38 and up overflow the power of two). */
#ifndef CINDER_CPU_EXP_H
#define CINDER_CPU_EXP_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define CPU_EXP_HI    88.3762626647949f
#define CPU_EXP_LO    -88.3762626647949f
#define CPU_EXP_LOG2E 1.44269504088896341f
#define CPU_EXP_C1    0.693359375f
#define CPU_EXP_C2    -2.12194440e-4f
#define CPU_EXP_P0    1.9875691500e-4f
#define CPU_EXP_P1    1.3981999507e-3f
#define CPU_EXP_P2    8.3334519073e-3f
#define CPU_EXP_P3    4.1665795894e-2f
#define CPU_EXP_P4    1.6666665459e-1f
#define CPU_EXP_P5    5.0000001201e-1f

static inline float cpu_exp_scalar(float x) {
    x = fminf(fmaxf(x, CPU_EXP_LO), CPU_EXP_HI);
    float fx = floorf(x * CPU_EXP_LOG2E + 0.5f);
    x = x - fx * CPU_EXP_C1;
    x = x - fx * CPU_EXP_C2;
    float z = x * x;
    float y = fmaf(CPU_EXP_P0, x, CPU_EXP_P1);
    y = fmaf(y, x, CPU_EXP_P2);
    y = fmaf(y, x, CPU_EXP_P3);
    y = fmaf(y, x, CPU_EXP_P4);
    y = fmaf(y, x, CPU_EXP_P5);
    y = fmaf(y, z, x);
    y = y + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)fx + 127) << 23;
    float p2;
    memcpy(&p2, &bits, 4);
    return y * p2;
}

#if defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("avx2,fma"), always_inline)) static inline __m256 cpu_exp_avx2(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(CPU_EXP_LO)), _mm256_set1_ps(CPU_EXP_HI));
    __m256 fx = _mm256_floor_ps(
        _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(CPU_EXP_LOG2E)), _mm256_set1_ps(0.5f)));
    x = _mm256_sub_ps(x, _mm256_mul_ps(fx, _mm256_set1_ps(CPU_EXP_C1)));
    x = _mm256_sub_ps(x, _mm256_mul_ps(fx, _mm256_set1_ps(CPU_EXP_C2)));
    __m256 z = _mm256_mul_ps(x, x);
    __m256 y = _mm256_fmadd_ps(_mm256_set1_ps(CPU_EXP_P0), x, _mm256_set1_ps(CPU_EXP_P1));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(CPU_EXP_P2));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(CPU_EXP_P3));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(CPU_EXP_P4));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(CPU_EXP_P5));
    y = _mm256_fmadd_ps(y, z, x);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
    __m256i n = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
    return _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(n, 23)));
}
#endif

#endif

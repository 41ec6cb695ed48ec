/*
 * Deterministic numeric primitives of the feature kernel: MurmurHash3_x86_32 and log1p.
 *
 * Why our own: "bit for bit" (DESIGN.md) means the served tensor equals the training matrix on every
 * supported machine. libm's log1p differs between glibc/musl/macOS versions, and string hashing must not
 * depend on the interpreter. Everything here uses only + - * / on IEEE doubles and integer bit operations,
 * and the build passes -ffp-contract=off, so the compiler cannot fuse a*b+c into an FMA with a different
 * rounding. Hex float literals keep every constant exact.
 */
#ifndef SKEWLESS_FP_H
#define SKEWLESS_FP_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

/* ---- MurmurHash3_x86_32 (Austin Appleby, public domain) -------------------------------------------
 * Blocks are read byte by byte as little-endian so the hash is the same on any host byte order. */

static inline uint32_t sl_rotl32(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

static inline uint32_t sl_fmix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

static inline uint32_t sl_murmur3_32(const uint8_t *data, size_t len, uint32_t seed) {
    const size_t nblocks = len / 4;
    const uint32_t c1 = 0xcc9e2d51u, c2 = 0x1b873593u;
    uint32_t h1 = seed, k1;
    size_t i;
    for (i = 0; i < nblocks; i++) {
        const uint8_t *p = data + 4 * i;
        k1 = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
        k1 *= c1;
        k1 = sl_rotl32(k1, 15);
        k1 *= c2;
        h1 ^= k1;
        h1 = sl_rotl32(h1, 13);
        h1 = h1 * 5u + 0xe6546b64u;
    }
    const uint8_t *tail = data + 4 * nblocks;
    k1 = 0;
    switch (len & 3) {
    case 3: k1 ^= (uint32_t)tail[2] << 16; /* fall through */
    case 2: k1 ^= (uint32_t)tail[1] << 8;  /* fall through */
    case 1: k1 ^= (uint32_t)tail[0];
            k1 *= c1; k1 = sl_rotl32(k1, 15); k1 *= c2; h1 ^= k1;
    }
    h1 ^= (uint32_t)len;
    return sl_fmix32(h1);
}

/* ---- log1p -----------------------------------------------------------------------------------------
 * Port of fdlibm's s_log1p.c (error < 1 ulp), which needs only + - * / and exponent bit manipulation.
 *
 * ====================================================
 * Copyright (C) 1993 by Sun Microsystems, Inc. All rights reserved.
 *
 * Developed at SunPro, a Sun Microsystems, Inc. business.
 * Permission to use, copy, modify, and distribute this
 * software is freely granted, provided that this notice
 * is preserved.
 * ====================================================
 */

static inline int32_t sl_high_word(double x) {
    uint64_t b; memcpy(&b, &x, 8); return (int32_t)(b >> 32);
}

static inline double sl_with_high_word(double x, uint32_t hi) {
    uint64_t b; memcpy(&b, &x, 8);
    b = ((uint64_t)hi << 32) | (b & 0xffffffffu);
    memcpy(&x, &b, 8); return x;
}

static inline double sl_log1p(double x) {
    const double ln2_hi = 0x1.62e42fee00000p-1, ln2_lo = 0x1.a39ef35793c76p-33;
    const double Lp1 = 0x1.5555555555593p-1, Lp2 = 0x1.999999997fa04p-2, Lp3 = 0x1.2492494229359p-2,
                 Lp4 = 0x1.c71c51d8e78afp-3, Lp5 = 0x1.7466496cb03dep-3, Lp6 = 0x1.39a09d078c69fp-3,
                 Lp7 = 0x1.2f112df3e5244p-3;
    double hfsq, f = 0.0, c = 0.0, s, z, R, u;
    int32_t k, hx, hu = 0, ax;

    hx = sl_high_word(x);
    ax = hx & 0x7fffffff;
    k = 1;
    if (hx < 0x3FDA827A) {                        /* 1+x < sqrt(2)+ (includes every negative x) */
        if (ax >= 0x3ff00000) {                   /* x <= -1.0 or x is -inf / negative NaN */
            if (x == -1.0) return -__builtin_inf();
            return (x != x) ? x : __builtin_nan("");
        }
        if (ax < 0x3e200000) {                    /* |x| < 2**-29 */
            if (ax < 0x3c900000) return x;        /* |x| < 2**-54: also keeps -0.0 and subnormals */
            return x - x * x * 0.5;
        }
        if (hx > 0 || hx <= (int32_t)0xbfd2bec4) { /* sqrt(2)/2- <= 1+x < sqrt(2)+ */
            k = 0; f = x; hu = 1;
        }
    }
    if (hx >= 0x7ff00000) return x + x;           /* +inf or NaN */
    if (k != 0) {
        if (hx < 0x43400000) {
            u = 1.0 + x;
            hu = sl_high_word(u);
            k = (hu >> 20) - 1023;
            c = (k > 0) ? 1.0 - (u - x) : x - (u - 1.0); /* correction term for the rounding of 1+x */
            c /= u;
        } else {
            u = x;
            hu = sl_high_word(u);
            k = (hu >> 20) - 1023;
            c = 0;
        }
        hu &= 0x000fffff;
        if (hu < 0x6a09e) {                       /* u ~< sqrt(2) */
            u = sl_with_high_word(u, (uint32_t)hu | 0x3ff00000u);
        } else {
            k += 1;
            u = sl_with_high_word(u, (uint32_t)hu | 0x3fe00000u);
            hu = (0x00100000 - hu) >> 2;
        }
        f = u - 1.0;
    }
    hfsq = 0.5 * f * f;
    if (hu == 0) {                                /* |f| < 2**-20 */
        if (f == 0.0) {
            if (k == 0) return 0.0;
            c += k * ln2_lo;
            return k * ln2_hi + c;
        }
        R = hfsq * (1.0 - 0.66666666666666666 * f);
        if (k == 0) return f - R;
        return k * ln2_hi - ((R - (k * ln2_lo + c)) - f);
    }
    s = f / (2.0 + f);
    z = s * s;
    R = z * (Lp1 + z * (Lp2 + z * (Lp3 + z * (Lp4 + z * (Lp5 + z * (Lp6 + z * Lp7))))));
    if (k == 0) return f - (hfsq - s * (hfsq + R));
    return k * ln2_hi - ((hfsq - (s * (hfsq + R) + (k * ln2_lo + c))) - f);
}

/* ---- floating-point environment ---------------------------------------------------------------------
 * Another library in the process (one built with -ffast-math, or a runtime that enables
 * denormals-are-zero) can leave flush-to-zero, denormals-are-zero or a non-default rounding mode in the
 * thread's control register, which would change subnormal and rounded results. The kernel runs under the
 * IEEE default (round to nearest even, no FTZ/DAZ, exceptions masked) and restores the caller's state. */
#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
typedef unsigned int sl_fp_env;
/* The "memory" clobbers keep the compiler from moving loads/stores (and so the arithmetic between them)
 * across the control-register writes, which it would otherwise treat as unrelated to floating point. */
static inline sl_fp_env sl_fp_env_enter(void) {
    __asm__ __volatile__("" ::: "memory");
    sl_fp_env old = _mm_getcsr();
    _mm_setcsr(0x1F80u | (old & 0x3Fu));   /* masks only; keep the sticky flags */
    __asm__ __volatile__("" ::: "memory");
    return old;
}
static inline void sl_fp_env_leave(sl_fp_env old) {
    __asm__ __volatile__("" ::: "memory");
    _mm_setcsr(old);
    __asm__ __volatile__("" ::: "memory");
}
static inline void sl_fp_env_set_ftz_daz(void) {
    __asm__ __volatile__("" ::: "memory");
    _mm_setcsr(_mm_getcsr() | 0x8040u);
    __asm__ __volatile__("" ::: "memory");
}
#define SL_FP_ENV_GUARD 1
#elif defined(__aarch64__)
typedef unsigned long long sl_fp_env;
static inline sl_fp_env sl_fp_env_enter(void) {
    sl_fp_env old;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(old) : : "memory");
    sl_fp_env ieee = old & ~((3ull << 22) | (1ull << 24) | (1ull << 25) | (1ull << 19)); /* RMode, FZ, DN, FZ16 */
    __asm__ __volatile__("msr fpcr, %0" : : "r"(ieee) : "memory");
    return old;
}
static inline void sl_fp_env_leave(sl_fp_env old) { __asm__ __volatile__("msr fpcr, %0" : : "r"(old) : "memory"); }
static inline void sl_fp_env_set_ftz_daz(void) {
    sl_fp_env v;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(v));
    v |= (1ull << 24);
    __asm__ __volatile__("msr fpcr, %0" : : "r"(v) : "memory");
}
#define SL_FP_ENV_GUARD 1
#else
typedef int sl_fp_env;
static inline sl_fp_env sl_fp_env_enter(void) { return 0; }
static inline void sl_fp_env_leave(sl_fp_env old) { (void)old; }
static inline void sl_fp_env_set_ftz_daz(void) {}
#define SL_FP_ENV_GUARD 0
#endif

/* Self-test of the guard: with FTZ/DAZ switched on by "someone else", halve a subnormal inside the guard.
 * Returns the guarded result (IEEE: 2^-1074) and, through *unguarded, the result outside it. */
static inline double sl_fp_env_selftest(double tiny_in, double* unguarded) {
    volatile double tiny = tiny_in;
    volatile double outside, inside;
    sl_fp_env caller = sl_fp_env_enter();
    sl_fp_env_leave(caller);
    sl_fp_env_set_ftz_daz();
    outside = tiny * 0.5;
    sl_fp_env g = sl_fp_env_enter();
    inside = tiny * 0.5;
    sl_fp_env_leave(g);
    sl_fp_env_leave(caller);
    *unguarded = outside;
    return inside;
}

/* ---- build probes ----------------------------------------------------------------------------------
 * a*b + c in this translation unit: with FMA contraction the product is not rounded before the add.
 * For a = 1 + 2^-30, b = 1 - 2^-30, c = -1 the separately rounded answer is 0.0 and the fused one -2^-60.
 * The arguments come from Python at run time, so the compiler cannot fold the expression away. */
static inline double sl_mul_add_probe(double a, double b, double c) { return a * b + c; }

#ifdef __FAST_MATH__
#define SL_FAST_MATH 1
#else
#define SL_FAST_MATH 0
#endif
#ifdef __FP_FAST_FMA
#define SL_HW_FMA 1
#else
#define SL_HW_FMA 0
#endif
#ifdef __FLT_EVAL_METHOD__
#define SL_FLT_EVAL_METHOD __FLT_EVAL_METHOD__
#else
#define SL_FLT_EVAL_METHOD -1
#endif
#if defined(__clang__)
#define SL_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define SL_COMPILER "gcc " __VERSION__
#else
#define SL_COMPILER "unknown"
#endif

#endif

/* gatekit's branch-free exp, sigmoid and tanh, shared by the compiled core (through
 * _gate.pxd), Cython gate plugins and the kernels generated from equation gates
 * (gatekit/core/codegen.py). */
#ifndef GATEKIT_FASTMATH_H
#define GATEKIT_FASTMATH_H

/* Branch-free exp, sigmoid and tanh that compilers vectorise when they are inlined into a loop
 * (a call to the C library's expf or tanhf stops vectorisation, and costs more than the
 * matrix products of a small LSTM step).
 *
 * exp: e^x = 2^n e^r with n = round(x / ln 2) and r = x - n ln 2 in [-ln2/2, ln2/2]
 * (Cody-Waite reduction, two-part ln 2), then the minimax polynomial (float) or rational
 * (double) approximations of Cephes (S. L. Moshier) for e^r; 2^n is built in the exponent bits.
 * tanh: the Cephes odd approximations below |x| = 0.625, 1 - 2 / (e^{2|x|} + 1) above.
 * Accuracy against extended-precision NumPy over [-200, 200] (tests/test_fastmath.py): at most
 * 2.4 units in the last place (float32 sigmoid; float64 sigmoid 2.0, tanh 1.1 and 1.3). Below
 * the smallest normal number e^x is 0 (so σ is 0 for x below about -87 in float32, -708 in
 * float64, where the C library returns subnormal numbers); NaN and ±inf give what NumPy gives.
 */

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float gk_pow2f(float n) {           /* 2^n for integral n in [-126, 127] */
    int32_t bits = ((int32_t) n + 127) << 23;
    float result;
    memcpy(&result, &bits, sizeof result);
    return result;
}

static inline double gk_pow2(double n) {          /* 2^n for integral n in [-1022, 1023] */
    int64_t bits = (int64_t) ((int32_t) n + 1023) << 52;   /* via int32: vectorises */
    double result;
    memcpy(&result, &bits, sizeof result);
    return result;
}

static inline float gk_expf(float x) {
    /* Clamped so 2^n stays a normal number, then overflow and underflow restored as NumPy
     * has them (inf, 0); comparisons with NaN are false, so NaN passes through. */
    float overflow = x > 88.7228391f ? INFINITY : 0.0f;
    int underflow = x < -87.3365447504f;
    x = x > 88.3762626647949f ? 88.3762626647949f : x;
    x = x < -87.3365447504f ? -87.3365447504f : x;
    /* round(x / ln 2) by adding and subtracting 1.5 * 2^23 (no rounding instruction needed) */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float r2 = r * r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r2 + r + 1.0f;
    p = p * gk_pow2f(n);
    p = overflow != 0.0f ? overflow : p;
    return underflow ? 0.0f : p;
}

static inline double gk_exp(double x) {
    double overflow = x > 709.782712893384 ? INFINITY : 0.0;
    int underflow = x < -708.0;
    x = x > 709.0 ? 709.0 : x;
    x = x < -708.0 ? -708.0 : x;
    double n = (x * 1.4426950408889634073599 + 6755399441055744.0) - 6755399441055744.0;
    double r = x - n * 6.93145751953125e-1 - n * 1.42860682030941723212e-6;
    double r2 = r * r;
    double p = ((1.26177193074810590878e-4 * r2 + 3.02994407707441961300e-2) * r2
                + 9.99999999999999999910e-1) * r;
    double q = ((3.00198505138664455042e-6 * r2 + 2.52448340349684104192e-3) * r2
                + 2.27265548208155028766e-1) * r2 + 2.00000000000000000009e0;
    p = (1.0 + 2.0 * p / (q - p)) * gk_pow2(n);
    p = overflow != 0.0 ? overflow : p;
    return underflow ? 0.0 : p;
}

static inline float gk_sigmoidf(float x) { return 1.0f / (1.0f + gk_expf(-x)); }
static inline double gk_sigmoid(double x) { return 1.0 / (1.0 + gk_exp(-x)); }

static inline float gk_tanhf(float x) {
    float a = x < 0 ? -x : x;
    float z = x * x;
    float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z
                    + 1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
    float large = 1.0f - 2.0f / (gk_expf(2.0f * a) + 1.0f);
    large = x < 0 ? -large : large;
    return a < 0.625f ? small : large;
}

static inline double gk_tanh(double x) {
    double a = x < 0 ? -x : x;
    double z = x * x;
    double p = (-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z
               - 1.61468768441708447952e3;
    double q = ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z
               + 4.84406305325125486048e3;
    double small = x + x * z * p / q;
    double large = 1.0 - 2.0 / (gk_exp(2.0 * a) + 1.0);
    large = x < 0 ? -large : large;
    return a < 0.625 ? small : large;
}

#endif

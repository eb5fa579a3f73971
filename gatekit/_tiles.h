/* Matrix products for the time loop over weights packed once per call, and the barrier that
 * keeps the threads of one call in step.
 *
 * Why not BLAS for these: a step's product is small (B rows), so a BLAS call spends much of its
 * time packing the same weights again at every step and waking and parking its own threads;
 * here the weights are packed once per call, each thread of the loop keeps its share of them in
 * its own cache for the whole sequence, and the gate maths runs on the product while it is still
 * in that cache.
 *
 * Packed layout: a panel holds GK_PANEL output columns (two vectors: 16 floats or 8 doubles
 * with AVX2, twice that with AVX-512) for every l of the reduction, panel[l * GK_PANEL + j],
 * zero-padded past the last column. The product of GK_ROWS rows by one panel keeps its
 * 2 * GK_ROWS accumulators in registers (12 of the 16 of AVX2, 24 of the 32 of AVX-512),
 * reading one broadcast number of A and two vectors of the panel per l. Written with GCC's
 * vector extensions: the AVX2 + FMA and AVX-512 builds turn them into fused multiply-adds, the
 * baseline build into SSE2 instructions.
 */
#ifndef GATEKIT_TILES_H
#define GATEKIT_TILES_H

#include <stddef.h>
#include <string.h>
#include <sched.h>

/* 64-byte vectors and 32 registers in the AVX-512 build, 32-byte vectors and 16 registers
 * otherwise. */
#if defined(__AVX512F__)
#define GK_VECTOR_BYTES 64
#define GK_ROWS 12
#else
#define GK_VECTOR_BYTES 32
#define GK_ROWS 6
#endif

typedef float gk_vf __attribute__((vector_size(GK_VECTOR_BYTES)));
typedef double gk_vd __attribute__((vector_size(GK_VECTOR_BYTES)));

/* Pack n <= GK_PANEL columns j of w, element (j, l) at w[j * column_stride + l * l_stride], for
 * l < k, into one panel. */
#define GK_DEFINE_PACK(S, T, PANEL)                                                          \
    static void gk_pack_##S(T* panel, const T* w, ptrdiff_t column_stride,                   \
                            ptrdiff_t l_stride, ptrdiff_t k, ptrdiff_t n) {                  \
        for (ptrdiff_t l = 0; l < k; l++)                                                    \
            for (ptrdiff_t j = 0; j < PANEL; j++)                                            \
                panel[l * PANEL + j] = j < n ? w[j * column_stride + l * l_stride] : 0;      \
    }

/* acc[i] += Σ_l a[i, l] * panel[l, :] for i < m (a constant after inlining: the accumulators
 * stay in registers). */
#define GK_DEFINE_ACCUMULATE(S, T, V)                                                        \
    static inline __attribute__((always_inline)) void gk_accumulate_##S(                     \
            V acc[GK_ROWS][2], const int m, const T* a, ptrdiff_t lda, ptrdiff_t k,          \
            const T* panel) {                                                                \
        enum { width = sizeof(V) / sizeof(T) };                                              \
        ptrdiff_t l = 0;                                                                     \
        if (m <= 2) {                                                                        \
            /* Each accumulator waits for its previous multiply-add (4 cycles): with fewer    \
             * than 8 in flight the product would run at a fraction of the machine's rate,  \
             * so one or two rows take four l at a time into separate sums. */               \
            V part[4][2][2] = {{{{0}}}};                                                     \
            for (; l + 4 <= k; l += 4) {                                                     \
                for (int q = 0; q < 4; q++) {                                                \
                    V w0, w1;                                                                \
                    memcpy(&w0, panel + (l + q) * 2 * width, sizeof w0);                     \
                    memcpy(&w1, panel + (l + q) * 2 * width + width, sizeof w1);             \
                    for (int i = 0; i < m; i++) {                                            \
                        T ai = a[i * lda + l + q];                                           \
                        part[q][i][0] += ai * w0;                                            \
                        part[q][i][1] += ai * w1;                                            \
                    }                                                                        \
                }                                                                            \
            }                                                                                \
            for (int i = 0; i < m; i++) {                                                    \
                acc[i][0] += (part[0][i][0] + part[1][i][0]) + (part[2][i][0] + part[3][i][0]); \
                acc[i][1] += (part[0][i][1] + part[1][i][1]) + (part[2][i][1] + part[3][i][1]); \
            }                                                                                \
        }                                                                                    \
        for (; l < k; l++) {                                                                 \
            V w0, w1;                                                                        \
            memcpy(&w0, panel + l * 2 * width, sizeof w0);                                   \
            memcpy(&w1, panel + l * 2 * width + width, sizeof w1);                           \
            for (int i = 0; i < m; i++) {                                                    \
                T ai = a[i * lda + l];                                                       \
                acc[i][0] += ai * w0;                                                        \
                acc[i][1] += ai * w1;                                                        \
            }                                                                                \
        }                                                                                    \
    }

/* The rows i < m of one panel's columns j < n:
 *   c[i, j] = bias[j] + Σ_l a1[i, l] p[l, j] + Σ_l a2[i, l] p[k1 + l, j]   (bias given), or
 *   c[i, j] += Σ_l a1[i, l] p[l, j] + Σ_l a2[i, l] p[k1 + l, j]            (bias NULL).
 * Two sources of A so that [STM_{t-1}, E_t] needs no copy into one row. */
#define GK_DEFINE_TILE(S, T, V)                                                              \
    static inline __attribute__((always_inline)) void gk_tile_##S(                           \
            const int m, const T* a1, ptrdiff_t lda1, ptrdiff_t k1, const T* a2,             \
            ptrdiff_t lda2, ptrdiff_t k2, const T* panel, const T* bias, T* c,               \
            ptrdiff_t ldc, ptrdiff_t n) {                                                    \
        enum { width = sizeof(V) / sizeof(T) };                                              \
        V acc[GK_ROWS][2];                                                                   \
        for (int i = 0; i < m; i++)                                                          \
            acc[i][0] = acc[i][1] = (V) {0};                                                 \
        gk_accumulate_##S(acc, m, a1, lda1, k1, panel);                                      \
        gk_accumulate_##S(acc, m, a2, lda2, k2, panel + k1 * 2 * width);                     \
        for (int i = 0; i < m; i++) {                                                        \
            T* row = c + i * ldc;                                                            \
            if (n == 2 * width) {                                                            \
                V c0, c1;                                                                    \
                if (bias) {                                                                  \
                    memcpy(&c0, bias, sizeof c0);                                            \
                    memcpy(&c1, bias + width, sizeof c1);                                    \
                } else {                                                                     \
                    memcpy(&c0, row, sizeof c0);                                             \
                    memcpy(&c1, row + width, sizeof c1);                                     \
                }                                                                            \
                c0 += acc[i][0];                                                             \
                c1 += acc[i][1];                                                             \
                memcpy(row, &c0, sizeof c0);                                                 \
                memcpy(row + width, &c1, sizeof c1);                                         \
            } else {                                                                         \
                T sums[2 * width];                                                           \
                memcpy(sums, &acc[i][0], sizeof acc[i][0]);                                  \
                memcpy(sums + width, &acc[i][1], sizeof acc[i][1]);                          \
                for (ptrdiff_t j = 0; j < n; j++)                                            \
                    row[j] = (bias ? bias[j] : row[j]) + sums[j];                            \
            }                                                                                \
        }                                                                                    \
    }

/* The last m < GK_ROWS rows: one copy of the tile per m, so that m is a constant in each. */
#define GK_REST_CASE(S, M)                                                                   \
        case M: gk_tile_##S(M, a1, lda1, k1, a2, lda2, k2, panel, bias, c, ldc, n); break;
#define GK_DEFINE_REST(S, T)                                                                 \
    static void gk_rest_##S(int m, const T* a1, ptrdiff_t lda1, ptrdiff_t k1, const T* a2,   \
                            ptrdiff_t lda2, ptrdiff_t k2, const T* panel, const T* bias,     \
                            T* c, ptrdiff_t ldc, ptrdiff_t n) {                              \
        switch (m) {                                                                         \
        GK_REST_CASE(S, 1) GK_REST_CASE(S, 2) GK_REST_CASE(S, 3) GK_REST_CASE(S, 4)          \
        GK_REST_CASE(S, 5) GK_REST_MORE(S)                                                   \
        default: break;                                                                      \
        }                                                                                    \
    }
#if GK_ROWS > 6
#define GK_REST_MORE(S) GK_REST_CASE(S, 6) GK_REST_CASE(S, 7) GK_REST_CASE(S, 8)             \
                        GK_REST_CASE(S, 9) GK_REST_CASE(S, 10) GK_REST_CASE(S, 11)
#else
#define GK_REST_MORE(S)
#endif

/* gk_tile over all `rows` rows, GK_ROWS at a time, the panel staying in cache between them. */
#define GK_DEFINE_PRODUCT(S, T)                                                              \
    static void gk_product_##S(ptrdiff_t rows, const T* a1, ptrdiff_t lda1, ptrdiff_t k1,    \
                               const T* a2, ptrdiff_t lda2, ptrdiff_t k2, const T* panel,    \
                               const T* bias, T* c, ptrdiff_t ldc, ptrdiff_t n) {            \
        ptrdiff_t r = 0;                                                                     \
        for (; r + GK_ROWS <= rows; r += GK_ROWS)                                            \
            gk_tile_##S(GK_ROWS, a1 + r * lda1, lda1, k1, a2 + r * lda2, lda2, k2, panel,    \
                        bias, c + r * ldc, ldc, n);                                          \
        if (rows > r)                                                                        \
            gk_rest_##S(rows - r, a1 + r * lda1, lda1, k1, a2 + r * lda2, lda2, k2, panel,  \
                        bias, c + r * ldc, ldc, n);                                          \
    }

#define GK_PANEL_FLOAT (2 * GK_VECTOR_BYTES / 4)
#define GK_PANEL_DOUBLE (2 * GK_VECTOR_BYTES / 8)

GK_DEFINE_PACK(float, float, GK_PANEL_FLOAT)
GK_DEFINE_PACK(double, double, GK_PANEL_DOUBLE)
GK_DEFINE_ACCUMULATE(float, float, gk_vf)
GK_DEFINE_ACCUMULATE(double, double, gk_vd)
GK_DEFINE_TILE(float, float, gk_vf)
GK_DEFINE_TILE(double, double, gk_vd)
GK_DEFINE_REST(float, float)
GK_DEFINE_REST(double, double)
GK_DEFINE_PRODUCT(float, float)
GK_DEFINE_PRODUCT(double, double)


/* A barrier for the `size` threads of one call: each step's product needs all of STM_{t-1},
 * which every thread wrote a share of. Spinning answers in well under a microsecond; after
 * GK_SPINS rounds a waiter yields its CPU, so a thread that the machine has descheduled (other
 * work on a shared machine) gets to run and arrive. */
#define GK_SPINS 20000

typedef struct {
    int size;
    int arrived;
    int generation;
} gk_barrier;

static inline void gk_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void gk_barrier_init(gk_barrier* barrier, int size) {
    barrier->size = size;
    barrier->arrived = 0;
    barrier->generation = 0;
}

static void gk_barrier_wait(gk_barrier* barrier) {
    int generation = __atomic_load_n(&barrier->generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&barrier->arrived, 1, __ATOMIC_ACQ_REL) == barrier->size) {
        /* Reset before releasing: nobody passes (and arrives again) until generation moves. */
        __atomic_store_n(&barrier->arrived, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&barrier->generation, generation + 1, __ATOMIC_RELEASE);
        return;
    }
    for (long spins = 0; __atomic_load_n(&barrier->generation, __ATOMIC_ACQUIRE) == generation;
         spins++) {
        if (spins < GK_SPINS)
            gk_pause();
        else
            sched_yield();
    }
}

/* The threads of a call wait until the caller has started them all (1), or could not (-1:
 * they leave, and the caller runs the loop alone). */
static int gk_wait_for_start(int* start) {
    int value;
    for (long spins = 0; (value = __atomic_load_n(start, __ATOMIC_ACQUIRE)) == 0; spins++) {
        if (spins < GK_SPINS)
            gk_pause();
        else
            sched_yield();
    }
    return value;
}

static void gk_set_start(int* start, int value) {
    __atomic_store_n(start, value, __ATOMIC_RELEASE);
}

#endif

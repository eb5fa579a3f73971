/* Matrix products for the time loop over weights packed once per call, and the barrier that
 * keeps the threads of one call in step.
 *
 * Why not BLAS for these: a step's product is small (B rows), so a BLAS call spends much of its
 * time packing the same weights again at every step and waking and parking its own threads;
 * here the weights are packed once per call, each thread of the loop keeps its share of them in
 * its own cache for the whole sequence, and the gate maths runs on the product while it is still
 * in that cache.
 *
 * Packed layout: a panel holds GK_PANEL output columns (two vectors: 8 floats or 4 doubles in
 * the portable build, twice that with AVX2, four times with AVX-512) for every l of the reduction, panel[l * GK_PANEL + j],
 * zero-padded past the last column. The product of GK_ROWS rows by one panel keeps its
 * 2 * GK_ROWS accumulators in registers (12 of the 16 of AVX2, 24 of the 32 of AVX-512),
 * reading one broadcast number of A and two vectors of the panel per l. Written with GCC's
 * vector extensions: the AVX2 + FMA and AVX-512 builds turn them into fused multiply-adds, the
 * baseline build into SSE2 multiplies and adds.
 */
#ifndef GATEKIT_TILES_H
#define GATEKIT_TILES_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <limits.h>
#include <time.h>
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* Vectors as wide as the build's instruction set: 64 bytes and 32 registers with AVX-512,
 * 32 bytes and 16 registers with AVX2, 16 bytes and 16 registers in the portable build (SSE2,
 * which every x86-64 has; wider vectors there would be split in two and spilled to memory at
 * every multiply-add). */
#if defined(__AVX512F__)
#define GK_VECTOR_BYTES 64
#define GK_ROWS 12
#elif defined(__AVX2__) || !(defined(__x86_64__) || defined(__i386__))
#define GK_VECTOR_BYTES 32
#define GK_ROWS 6
#else
#define GK_VECTOR_BYTES 16
#define GK_ROWS 6
#endif

typedef float gk_vf __attribute__((vector_size(GK_VECTOR_BYTES)));
typedef double gk_vd __attribute__((vector_size(GK_VECTOR_BYTES)));

/* Pack n <= GK_PANEL columns j of w, element (j, l) at w[j * column_stride + l * l_stride], for
 * l < k, into one panel. The inner loop is unrolled: left as a loop of one element, it took
 * twice as long (AMD Zen) wherever the code it is inlined into happened to place it across a
 * 64-byte boundary, the CPU then fetching its few instructions in two windows per element. */
#define GK_DEFINE_PACK(S, T, PANEL)                                                          \
    static void gk_pack_##S(T* panel, const T* w, ptrdiff_t column_stride,                   \
                            ptrdiff_t l_stride, ptrdiff_t k, ptrdiff_t n) {                  \
        for (ptrdiff_t l = 0; l < k; l++)                                                    \
            _Pragma("GCC unroll 4")                                                          \
            for (ptrdiff_t j = 0; j < PANEL; j++)                                            \
                panel[l * PANEL + j] = j < n ? w[j * column_stride + l * l_stride] : 0;      \
    }

/* acc[i] += Σ_l a[i * rsa + l * csa] * panel[l * ldp + :] for i < m (m is a constant after
 * inlining: the accumulators stay in registers). Packed panels have ldp = GK_PANEL; the rows of
 * a row-major matrix can serve as a panel as they are (ldp = its row stride). With `split`, one
 * or two rows sum in four interleaved parts: faster, but rounded otherwise than the same row
 * in a larger tile, so products whose tiles depend on the threads' shares (the weight
 * gradients) pass split = 0, and any number of threads gives the same bits. */
#define GK_DEFINE_ACCUMULATE(S, T, V)                                                        \
    static inline __attribute__((always_inline)) void gk_accumulate_##S(                     \
            V acc[GK_ROWS][2], const int m, const T* a, ptrdiff_t rsa, ptrdiff_t csa,        \
            ptrdiff_t k, const T* panel, ptrdiff_t ldp, const int split) {                   \
        enum { width = sizeof(V) / sizeof(T) };                                              \
        ptrdiff_t l = 0;                                                                     \
        if (split && m <= 2) {                                                               \
            /* Each accumulator waits for its previous multiply-add (4 cycles): with fewer    \
             * than 8 in flight the product would run at a fraction of the machine's rate,  \
             * so one or two rows take four l at a time into separate sums. */               \
            V part[4][2][2] = {{{{0}}}};                                                     \
            for (; l + 4 <= k; l += 4) {                                                     \
                for (int q = 0; q < 4; q++) {                                                \
                    V w0, w1;                                                                \
                    memcpy(&w0, panel + (l + q) * ldp, sizeof w0);                           \
                    memcpy(&w1, panel + (l + q) * ldp + width, sizeof w1);                   \
                    for (int i = 0; i < m; i++) {                                            \
                        T ai = a[i * rsa + (l + q) * csa];                                   \
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
            memcpy(&w0, panel + l * ldp, sizeof w0);                                         \
            memcpy(&w1, panel + l * ldp + width, sizeof w1);                                 \
            for (int i = 0; i < m; i++) {                                                    \
                T ai = a[i * rsa + l * csa];                                                 \
                acc[i][0] += ai * w0;                                                        \
                acc[i][1] += ai * w1;                                                        \
            }                                                                                \
        }                                                                                    \
    }

/* The rows i < m of one panel's columns j < n:
 *   c[i, j] = bias[j] + Σ_l a1(i, l) p[l, j] + Σ_l a2[i, l] p[k1 + l, j]   (bias given), or
 *   c[i, j] += Σ_l a1(i, l) p[l, j] + Σ_l a2[i, l] p[k1 + l, j]            (bias NULL),
 * a1(i, l) = a1[i * rsa1 + l * csa1], p[l, j] = panel[l * ldp + j]. Two sources of A so that
 * [STM_{t-1}, E_t] needs no copy into one row. */
#define GK_DEFINE_TILE(S, T, V)                                                              \
    static inline __attribute__((always_inline)) void gk_tile_##S(                           \
            const int m, const T* a1, ptrdiff_t rsa1, ptrdiff_t csa1, ptrdiff_t k1,          \
            const T* a2, ptrdiff_t lda2, ptrdiff_t k2, const T* panel, ptrdiff_t ldp,        \
            const T* bias, T* c, ptrdiff_t ldc, ptrdiff_t n, const int split) {              \
        enum { width = sizeof(V) / sizeof(T) };                                              \
        V acc[GK_ROWS][2];                                                                   \
        for (int i = 0; i < m; i++)                                                          \
            acc[i][0] = acc[i][1] = (V) {0};                                                 \
        gk_accumulate_##S(acc, m, a1, rsa1, csa1, k1, panel, ldp, split);                    \
        gk_accumulate_##S(acc, m, a2, lda2, 1, k2, panel + k1 * ldp, ldp, split);            \
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
        case M: gk_tile_##S(M, a1, rsa1, csa1, k1, a2, lda2, k2, panel, ldp, bias, c, ldc,   \
                            n, split); break;
#define GK_DEFINE_REST(S, T)                                                                 \
    static void gk_rest_##S(int m, const T* a1, ptrdiff_t rsa1, ptrdiff_t csa1, ptrdiff_t k1, \
                            const T* a2, ptrdiff_t lda2, ptrdiff_t k2, const T* panel,       \
                            ptrdiff_t ldp, const T* bias, T* c, ptrdiff_t ldc, ptrdiff_t n,  \
                            int split) {                                                     \
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

/* gk_tile over `rows` rows, GK_ROWS at a time, the panel staying in cache between them:
 * gk_product over a packed panel and A in rows (the time loop), gk_product_strided over any
 * panel rows and any A, accumulating into c (gk_gemm). */
#define GK_DEFINE_PRODUCT(S, T)                                                              \
    static inline __attribute__((always_inline)) void gk_rows_##S(                           \
            ptrdiff_t rows, const T* a1, ptrdiff_t rsa1, ptrdiff_t csa1, ptrdiff_t k1,       \
            const T* a2, ptrdiff_t lda2, ptrdiff_t k2, const T* panel, ptrdiff_t ldp,        \
            const T* bias, T* c, ptrdiff_t ldc, ptrdiff_t n, const int split) {              \
        ptrdiff_t r = 0;                                                                     \
        for (; r + GK_ROWS <= rows; r += GK_ROWS)                                            \
            gk_tile_##S(GK_ROWS, a1 + r * rsa1, rsa1, csa1, k1, a2 + r * lda2, lda2, k2,     \
                        panel, ldp, bias, c + r * ldc, ldc, n, split);                       \
        if (rows > r)                                                                        \
            gk_rest_##S(rows - r, a1 + r * rsa1, rsa1, csa1, k1, a2 + r * lda2, lda2, k2,    \
                        panel, ldp, bias, c + r * ldc, ldc, n, split);                       \
    }                                                                                        \
    static void gk_product_##S(ptrdiff_t rows, const T* a1, ptrdiff_t lda1, ptrdiff_t k1,    \
                               const T* a2, ptrdiff_t lda2, ptrdiff_t k2, const T* panel,    \
                               const T* bias, T* c, ptrdiff_t ldc, ptrdiff_t n) {            \
        gk_rows_##S(rows, a1, lda1, 1, k1, a2, lda2, k2, panel,                              \
                    2 * GK_VECTOR_BYTES / (ptrdiff_t) sizeof(T), bias, c, ldc, n, 1);        \
    }                                                                                        \
    static void gk_product_unsplit_##S(ptrdiff_t rows, const T* a, ptrdiff_t lda,           \
                                       ptrdiff_t k, const T* panel, T* c, ptrdiff_t ldc,     \
                                       ptrdiff_t n) {                                        \
        gk_rows_##S(rows, a, lda, 1, k, NULL, 0, 0, panel,                                   \
                    2 * GK_VECTOR_BYTES / (ptrdiff_t) sizeof(T), NULL, c, ldc, n, 0);        \
    }                                                                                        \
    static void gk_product_strided_##S(ptrdiff_t rows, const T* a, ptrdiff_t rsa,            \
                                       ptrdiff_t csa, ptrdiff_t k, const T* panel,           \
                                       ptrdiff_t ldp, T* c, ptrdiff_t ldc, ptrdiff_t n) {    \
        gk_rows_##S(rows, a, rsa, csa, k, NULL, 0, 0, panel, ldp, NULL, c, ldc, n, 1);       \
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


/* c[i, j] += Σ_l a[i, l] b[j, l] (A B^T, both row-major): dot products of rows, GK_DOTS rows
 * of each at a time, vectorised along l, so B needs no packing (the course Use gate's
 * W_u (LTM_{t-1} ⊙ f_t), one small product per step). Tiles at the edges repeat the last row
 * and drop what it computed. */
#if GK_VECTOR_BYTES == 64
#define GK_DOTS 4
#else
#define GK_DOTS 3
#endif
#define GK_DEFINE_DOTS(S, T, V)                                                              \
    static void gk_dots_##S(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const T* a, ptrdiff_t lda, \
                            const T* b, ptrdiff_t ldb, T* c, ptrdiff_t ldc) {                \
        enum { width = sizeof(V) / sizeof(T) };                                              \
        ptrdiff_t whole = k - k % width, i0 = 0;                                             \
        for (; i0 + GK_DOTS <= m; i0 += GK_DOTS)                                             \
            for (ptrdiff_t j0 = 0; j0 < n; j0 += GK_DOTS) {                                  \
                const T* ai[GK_DOTS];                                                        \
                const T* bj[GK_DOTS];                                                        \
                V acc[GK_DOTS][GK_DOTS];                                                     \
                for (int q = 0; q < GK_DOTS; q++) {                                          \
                    ai[q] = a + (i0 + q < m ? i0 + q : m - 1) * lda;                         \
                    bj[q] = b + (j0 + q < n ? j0 + q : n - 1) * ldb;                         \
                    for (int r = 0; r < GK_DOTS; r++)                                        \
                        acc[q][r] = (V) {0};                                                 \
                }                                                                            \
                for (ptrdiff_t l = 0; l < whole; l += width) {                               \
                    V av[GK_DOTS], bv[GK_DOTS];                                              \
                    for (int q = 0; q < GK_DOTS; q++) {                                      \
                        memcpy(&av[q], ai[q] + l, sizeof av[q]);                             \
                        memcpy(&bv[q], bj[q] + l, sizeof bv[q]);                             \
                    }                                                                        \
                    for (int q = 0; q < GK_DOTS; q++)                                        \
                        for (int r = 0; r < GK_DOTS; r++)                                    \
                            acc[q][r] += av[q] * bv[r];                                      \
                }                                                                            \
                for (int q = 0; q < GK_DOTS && i0 + q < m; q++)                              \
                    for (int r = 0; r < GK_DOTS && j0 + r < n; r++) {                        \
                        T lanes[width], sum = 0;                                             \
                        memcpy(lanes, &acc[q][r], sizeof lanes);                             \
                        for (int u = 0; u < width; u++)                                      \
                            sum += lanes[u];                                                 \
                        for (ptrdiff_t l = whole; l < k; l++)                                \
                            sum += ai[q][l] * bj[r][l];                                      \
                        c[(i0 + q) * ldc + j0 + r] += sum;                                   \
                    }                                                                        \
            }                                                                                \
        /* The last rows one at a time, against 2 * GK_DOTS rows of B (one sequence: the     \
         * whole product is this). */                                                        \
        for (; i0 < m; i0++)                                                                 \
            for (ptrdiff_t j0 = 0; j0 < n; j0 += 2 * GK_DOTS) {                              \
                const T* ai = a + i0 * lda;                                                  \
                const T* bj[2 * GK_DOTS];                                                    \
                V acc[2 * GK_DOTS];                                                          \
                for (int r = 0; r < 2 * GK_DOTS; r++) {                                      \
                    bj[r] = b + (j0 + r < n ? j0 + r : n - 1) * ldb;                         \
                    acc[r] = (V) {0};                                                        \
                }                                                                            \
                for (ptrdiff_t l = 0; l < whole; l += width) {                               \
                    V av;                                                                    \
                    memcpy(&av, ai + l, sizeof av);                                          \
                    for (int r = 0; r < 2 * GK_DOTS; r++) {                                  \
                        V bv;                                                                \
                        memcpy(&bv, bj[r] + l, sizeof bv);                                   \
                        acc[r] += av * bv;                                                   \
                    }                                                                        \
                }                                                                            \
                for (int r = 0; r < 2 * GK_DOTS && j0 + r < n; r++) {                        \
                    T lanes[width], sum = 0;                                                 \
                    memcpy(lanes, &acc[r], sizeof lanes);                                    \
                    for (int u = 0; u < width; u++)                                          \
                        sum += lanes[u];                                                     \
                    for (ptrdiff_t l = whole; l < k; l++)                                    \
                        sum += ai[l] * bj[r][l];                                             \
                    c[i0 * ldc + j0 + r] += sum;                                             \
                }                                                                            \
            }                                                                                \
    }

/* C = op(A) op(B) + beta C, all row-major, op(X) = X or X^T: op(A) (m, k), op(B) (k, n),
 * C (m, n); beta = 0 sets C whatever it held. The rows of B serve as panels where op(B) = B
 * (a last, partial panel is copied, so that no load passes the end of B). Where op(B) = B^T,
 * each panel of it is copied, except for fewer than GK_ROWS rows of A = op(A): there the copy
 * would cost as much as the product, and gk_dots needs none. Returns -1 if it could not
 * allocate a panel's copy (C then holds beta C), else 0. */
#define GK_DEFINE_GEMM(S, T)                                                                 \
    static int gk_gemm_##S(int trans_a, int trans_b, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,  \
                           const T* a, ptrdiff_t lda, const T* b, ptrdiff_t ldb, T beta,     \
                           T* c, ptrdiff_t ldc) {                                            \
        enum { panel = 2 * GK_VECTOR_BYTES / sizeof(T) };                                    \
        ptrdiff_t rsa = trans_a ? 1 : lda, csa = trans_a ? lda : 1;                          \
        T* copy = NULL;                                                                      \
        if (m <= 0 || n <= 0)                                                                \
            return 0;                                                                        \
        if (beta != 1)                                                                       \
            for (ptrdiff_t i = 0; i < m; i++)                                                \
                for (ptrdiff_t j = 0; j < n; j++)                                            \
                    c[i * ldc + j] = beta == 0 ? 0 : beta * c[i * ldc + j];                  \
        if (k <= 0)                                                                          \
            return 0;                                                                        \
        if (trans_b && !trans_a && m < GK_ROWS) {                                             \
            gk_dots_##S(m, n, k, a, lda, b, ldb, c, ldc);                                    \
            return 0;                                                                        \
        }                                                                                    \
        for (ptrdiff_t j = 0; j < n; j += panel) {                                           \
            ptrdiff_t width = n - j < panel ? n - j : panel;                                 \
            if (!trans_b && width == panel) {                                                \
                gk_product_strided_##S(m, a, rsa, csa, k, b + j, ldb, c + j, ldc, panel);    \
                continue;                                                                    \
            }                                                                                \
            if (copy == NULL && (copy = (T*) malloc(sizeof(T) * panel * k)) == NULL)         \
                return -1;                                                                   \
            if (trans_b)                                                                     \
                gk_pack_##S(copy, b + j * ldb, ldb, 1, k, width);                            \
            else                                                                             \
                gk_pack_##S(copy, b + j, 1, ldb, k, width);                                  \
            gk_product_strided_##S(m, a, rsa, csa, k, copy, panel, c + j, ldc, width);       \
        }                                                                                    \
        free(copy);                                                                          \
        return 0;                                                                            \
    }

GK_DEFINE_DOTS(float, float, gk_vf)
GK_DEFINE_DOTS(double, double, gk_vd)
GK_DEFINE_GEMM(float, float)
GK_DEFINE_GEMM(double, double)


/* A barrier for the `size` threads of one call: each step's product needs all of STM_{t-1},
 * which every thread wrote a share of. A waiter spins for up to GK_SPIN_NS, then sleeps on a
 * futex, so that on a busy machine it gives its CPU to the thread it is waiting for rather than
 * spinning (or yielding) while that thread waits for a CPU. The spin is long enough to cover a
 * step's imbalance on an idle machine: waking a sleeper takes tens of microseconds here, the
 * woken thread is then late at the next barrier, its partner sleeps there in turn, and at 50 us
 * such a chain of sleeps cost S3 a third of what its second thread gains. Each waiter adds the
 * time it waited to `waited` (ns): the loop reads it to tell whether the call would be faster on
 * one thread (see the loop's `go_alone`). */
#define GK_SPIN_NS 250000

/* `wait` first, and every wait through it: a compiled gate plugin has its own copy of this
 * header's inline functions, built against some version of gatekit, while the barrier is the
 * loop's; so a plugin's sync() runs the loop's barrier whatever the plugin was built with. */
typedef struct gk_barrier {
    void (*wait)(struct gk_barrier* barrier);
    int size;
    int arrived;
    int generation;
    int sleepers;
    long long waited;
} gk_barrier;

static inline void gk_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static inline long long gk_now_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long) now.tv_sec * 1000000000LL + now.tv_nsec;
}

/* Sleep while *address == value (or not at all if it has changed already); wake every sleeper
 * on address. Without futexes, a waiter yields its CPU instead. */
static inline void gk_sleep_while(int* address, int value) {
#if defined(__linux__)
    syscall(SYS_futex, address, FUTEX_WAIT_PRIVATE, value, NULL, NULL, 0);
#else
    (void) address; (void) value;
    sched_yield();
#endif
}

static inline void gk_wake_all(int* address) {
#if defined(__linux__)
    syscall(SYS_futex, address, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#else
    (void) address;
#endif
}

/* Wait until *address != value: spin, then sleep (counted in *sleepers, so that whoever
 * changes *address knows to wake it). Returns the time waited, in ns. */
static long long gk_wait_while(int* address, int value, int* sleepers) {
    long long start = gk_now_ns();
    for (int spins = 1; __atomic_load_n(address, __ATOMIC_ACQUIRE) == value; spins++) {
        if (spins % 32 == 0 && gk_now_ns() - start > GK_SPIN_NS) {
            /* Sequentially consistent with the waker's store and its read of *sleepers: either
             * it sees this sleeper, or this sleeper sees the new value. */
            __atomic_add_fetch(sleepers, 1, __ATOMIC_SEQ_CST);
            while (__atomic_load_n(address, __ATOMIC_SEQ_CST) == value)
                gk_sleep_while(address, value);
            __atomic_sub_fetch(sleepers, 1, __ATOMIC_SEQ_CST);
            break;
        }
        gk_pause();
    }
    return gk_now_ns() - start;
}

static void gk_barrier_arrive(gk_barrier* barrier);

static void gk_barrier_init(gk_barrier* barrier, int size) {
    barrier->wait = gk_barrier_arrive;
    barrier->size = size;
    barrier->arrived = 0;
    barrier->generation = 0;
    barrier->sleepers = 0;
    barrier->waited = 0;
}

static inline void gk_barrier_wait(gk_barrier* barrier) {
    barrier->wait(barrier);
}

static void gk_barrier_arrive(gk_barrier* barrier) {
    int generation = __atomic_load_n(&barrier->generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&barrier->arrived, 1, __ATOMIC_ACQ_REL) == barrier->size) {
        /* Reset before releasing: nobody passes (and arrives again) until generation moves. */
        __atomic_store_n(&barrier->arrived, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&barrier->generation, generation + 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&barrier->sleepers, __ATOMIC_SEQ_CST) > 0)
            gk_wake_all(&barrier->generation);
        return;
    }
    long long waited = gk_wait_while(&barrier->generation, generation, &barrier->sleepers);
    __atomic_add_fetch(&barrier->waited, waited, __ATOMIC_RELAXED);
}

/* Nanoseconds the threads have waited at the barrier so far, all together. */
static inline long long gk_barrier_waited(gk_barrier* barrier) {
    return __atomic_load_n(&barrier->waited, __ATOMIC_RELAXED);
}

/* Thread 0 of a call, having gone on alone, calls the threads it left behind back, or tells
 * them the pass is over: it changes *word, which they wait on (gk_wait_while). */
static void gk_signal(int* word, int* sleepers) {
    __atomic_add_fetch(word, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(sleepers, __ATOMIC_SEQ_CST) > 0)
        gk_wake_all(word);
}

/* Shares of work claimed at run time: the next one of *counter (each claimed once). */
static inline ptrdiff_t gk_claim(ptrdiff_t* counter) {
    return __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
}

/* A flag one thread raises once what it wrote before is there for the others to read. */
static inline void gk_raise(int* flag) {
    __atomic_store_n(flag, 1, __ATOMIC_RELEASE);
}

static inline int gk_raised(int* flag) {
    return __atomic_load_n(flag, __ATOMIC_ACQUIRE);
}

/* The threads of a call wait until the caller has started them all (1), or could not (-1:
 * they leave, and the caller runs the loop alone). */
typedef struct {
    int value;
    int sleepers;
} gk_start;

static void gk_start_init(gk_start* start) {
    start->value = 0;
    start->sleepers = 0;
}

static int gk_wait_for_start(gk_start* start) {
    gk_wait_while(&start->value, 0, &start->sleepers);
    return __atomic_load_n(&start->value, __ATOMIC_ACQUIRE);
}

static void gk_set_start(gk_start* start, int value) {
    __atomic_store_n(&start->value, value, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&start->sleepers, __ATOMIC_SEQ_CST) > 0)
        gk_wake_all(&start->value);
}

#endif

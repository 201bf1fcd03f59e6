/* Fused loss-and-gradient kernels for lambdagrad's linear, logistic and softmax models.
 *
 * Plain C with GCC/Clang vector extensions, so one source builds for x86-64 (AVX2) and for
 * Lambda's arm64 (NEON); no Python headers: lambdagrad/native/__init__.py loads it with
 * ctypes, and without it the numpy kernels in lambdagrad/models.py run instead. */

#include <math.h>
#include <stdint.h>

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define SHUF __builtin_shufflevector

/* Makes the compiler hold v in a register rather than fold its load into each use. */
#if defined(__x86_64__) && defined(__AVX__)
#define KEEP_IN_REGISTER(v) __asm__("" : "+x"(v))
#else
#define KEEP_IN_REGISTER(v) ((void)0)
#endif

#define VEC_BYTES 32 /* four doubles or eight floats: AVX2, or two NEON registers */
#define TILE 4       /* rows per tile of the linear and logistic kernels */
#define BLOCK 512    /* rows summed in the data's precision before adding to the float64 totals */

#define PREFETCH_TILES 2 /* the hardware prefetcher alone leaves a tile waiting on memory */

/* softmax (see kernels_impl.h) */
#define SM_NC 12                  /* classes of a row's scores summed in registers at once */
#define SM_MAXV 4                 /* classes (in vectors) the softmax transposes in registers */
#define SM_GC 6                   /* gradient: up to SM_GC classes x SM_GK feature vectors */
#define SM_GK 2                   /*   summed in registers (measured best of 1-6 x 1-8) */
#define SM_GC1 12                 /* a single vector of features: up to 12 classes at once */
#define SM_BLOCK_BYTES (128 << 10) /* a block of X and the next both fit L2 (512 KiB+) */
#define PF_BYTES (8 << 10)        /* the scores ask for the row this far ahead */
#define SM_GRAD_BYTES (32 << 10)  /* the gradient's rows at a time: they stay in L1 (32 KiB+) */

/* Asks for the TILE rows from row `from` on (contiguous) to be brought into cache. */
static inline void prefetch_rows(const void *X, int64_t from, int64_t n, int64_t row_bytes) {
    if (from >= n) return;
    int64_t rows = n - from < TILE ? n - from : TILE;
    const char *p = (const char *)X + from * row_bytes;
    for (int64_t off = 0; off < rows * row_bytes; off += 64) __builtin_prefetch(p + off, 0, 3);
}

/* Sums of logs are taken as logs of products (one log for many rows): adds log(*prod) to
 * *sum and restarts the product before it can overflow. Its factors are at most C (softmax)
 * or 2 (logistic) a row, so a check per tile of rows is enough. */
static inline void fold_log(double *prod, double *sum) {
    if (*prod > 0x1p900) {
        *sum += log(*prod);
        *prod = 1.0;
    }
}

/* exp on |r| <= ln2/2: near-minimax polynomials (Chebyshev fits, mpmath.chebyfit), error
 * 3e-18 (degree 11) / 2e-9 (degree 6), below the rounding of a double / a float */
static const double exp_coef_f64[] = {
    1.0, 0.999999999999999999764, 0.500000000000001838553, 0.166666666666666808057,
    0.0416666666664880954954, 0.00833333333331960061091, 0.00138888889523147746524,
    0.000198412698900471137067, 0.0000248014854823284924190, 0.00000275572409185789698230,
    2.76326396390410297493e-7, 2.51100376059637777120e-8};
static const float exp_coef_f32[] = {1.0f, 1.00000003771621384254f, 0.500000004711775767439f,
                                     0.166664155146532754274f, 0.0416663528967751567865f,
                                     0.00837512639815333568204f, 0.00139411084339726746085f};

#define REAL double
#define IREAL int64_t
#define SUFFIX f64
#define SPLAT_INIT(x) {x, x, x, x}
#define LANES_N 4
#define EXP_COEF exp_coef_f64
#define EXP_DEGREE 11
#define EXP_MIN (-708.0)
#define ROUND_SHIFT 0x1.8p52 /* adding it rounds to an integer held in the low mantissa bits */
#define LN2_HI 0.6931471803691238
#define LN2_LO 1.9082149292705877e-10
#define MANT_BITS 52
#include "kernels_impl.h"
#undef REAL
#undef IREAL
#undef SUFFIX
#undef SPLAT_INIT
#undef LANES_N
#undef EXP_COEF
#undef EXP_DEGREE
#undef EXP_MIN
#undef ROUND_SHIFT
#undef LN2_HI
#undef LN2_LO
#undef MANT_BITS

#define REAL float
#define IREAL int32_t
#define SUFFIX f32
#define SPLAT_INIT(x) {x, x, x, x, x, x, x, x}
#define LANES_N 8
#define EXP_COEF exp_coef_f32
#define EXP_DEGREE 6
#define EXP_MIN (-86.5f)
#define ROUND_SHIFT 0x1.8p23f
#define LN2_HI 0.693145751953125f
#define LN2_LO 1.428606765330187e-06f
#define MANT_BITS 23
#include "kernels_impl.h"

/* REALs of work buffer lg_softmax_f64/f32 need for d features and C classes (at most, for
 * either dtype): W transposed and the block's gradient (C rows of whole vectors each, of
 * which the kernel uses C - 1: the last class is the reference), the
 * scores and d loss / d score rows of one block, the padded bias and its block gradient. */
int64_t lg_softmax_work(int64_t d, int64_t C) {
    const int64_t lanes = VEC_BYTES / sizeof(float), line = 64 / sizeof(float);
    const int64_t ws = (d + lanes - 1) / lanes * lanes, cp = (C + lanes - 1) / lanes * lanes;
    const int64_t wt = (C * ws + line - 1) / line * line, s = (BLOCK * cp + line - 1) / line * line;
    const int64_t b = (cp + line - 1) / line * line;
    /* Wt, Gt, S, bp, gb, gbt, then (float32) Gd: C x ws doubles; + line: to align the start */
    return 2 * wt + s + 2 * b + b * lanes + 2 * wt + line;
}

/* The kernels' contract, which lambdagrad/native/__init__.py (ABI_VERSION) checks before it
 * loads the library: 2 = the softmax checks its class labels (returns -2 for one outside
 * [0, C)), which the models then no longer do. A library built from an older kernels.c
 * (an editable install not rebuilt) is refused, not trusted to check them. */
int64_t lg_abi_version(void) { return 2; }

/* REALs of work buffer lg_affine_f64/f32 need for d features. */
int64_t lg_affine_work(int64_t d) { return d + 64 / sizeof(float); }
/* Bytes per vector: the softmax kernel needs rows of at least one vector of features. */
int64_t lg_vector_bytes(void) { return VEC_BYTES; }

/* One dtype's fused loss-and-gradient kernels; kernels.c includes this file once for
 * double and once for float (REAL, SUFFIX, and the exp constants are set there).
 *
 * Each kernel reads every row of X from memory once. Linear and logistic: a tile of TILE
 * rows is loaded, its scores computed, turned into d loss / d score, and its outer product
 * added to the gradient while the tile is still in L1. Softmax: the tiles of a block get
 * their scores and d loss / d score rows (D), then the block's gradient X_b^T D is summed
 * from L2 while the next block is prefetched. Gradients are summed in REAL over at most
 * BLOCK rows and then added to the caller's float64 sums, so float32 data keeps float64
 * totals. */

#define VEC_T CAT(vec_, SUFFIX)
#define UVEC_T CAT(uvec_, SUFFIX)
#define IVEC_T CAT(ivec_, SUFFIX)
#define LANES ((int)(VEC_BYTES / sizeof(REAL)))

typedef REAL VEC_T __attribute__((vector_size(VEC_BYTES)));
typedef REAL UVEC_T __attribute__((vector_size(VEC_BYTES), aligned(sizeof(REAL)), may_alias));
typedef IREAL IVEC_T __attribute__((vector_size(VEC_BYTES)));

static inline VEC_T CAT(splat_, SUFFIX)(REAL x) { return (VEC_T)SPLAT_INIT(x); }

static inline VEC_T CAT(load_, SUFFIX)(const REAL *p) { return *(const UVEC_T *)p; }

static inline void CAT(store_, SUFFIX)(REAL *p, VEC_T v) { *(UVEC_T *)p = v; }

/* exp(x) for x <= 0, lane by lane, within 2 ulp: 2^n * P(r) with x = n ln2 + r, |r| <= ln2/2,
 * P the Taylor polynomial to EXP_DEGREE. Below EXP_MIN (where exp is subnormal) it is 0. */
static inline VEC_T CAT(vexp_, SUFFIX)(VEC_T x) {
    const VEC_T lo = CAT(splat_, SUFFIX)(EXP_MIN);
    IVEC_T below = x < lo;
    x = (VEC_T)(((IVEC_T)x & ~below) | ((IVEC_T)lo & below));
    const VEC_T shift = CAT(splat_, SUFFIX)(ROUND_SHIFT);
    VEC_T kf = x * CAT(splat_, SUFFIX)((REAL)1.4426950408889634) + shift;
    IVEC_T ki = (IVEC_T)kf;
    kf -= shift;
    VEC_T r = x - kf * CAT(splat_, SUFFIX)(LN2_HI) - kf * CAT(splat_, SUFFIX)(LN2_LO);
    VEC_T p = CAT(splat_, SUFFIX)(EXP_COEF[EXP_DEGREE]);
    for (int i = EXP_DEGREE - 1; i >= 0; i--) p = p * r + CAT(splat_, SUFFIX)(EXP_COEF[i]);
    IVEC_T n = ki - (IVEC_T)shift;
    IVEC_T scale = (n + EXP_BIAS) << MANT_BITS;
    return (VEC_T)((IVEC_T)(p * (VEC_T)scale) & ~below);
}

static inline VEC_T CAT(vmax_, SUFFIX)(VEC_T a, VEC_T b) {
    IVEC_T a_wins = a > b;
    return (VEC_T)(((IVEC_T)a & a_wins) | ((IVEC_T)b & ~a_wins));
}

static inline REAL CAT(hsum_, SUFFIX)(VEC_T v) {
    REAL s = 0;
    for (int i = 0; i < LANES; i++) s += v[i];
    return s;
}

static inline REAL CAT(hmax_, SUFFIX)(VEC_T v) {
    REAL m = v[0];
    for (int i = 1; i < LANES; i++) m = v[i] > m ? v[i] : m;
    return m;
}

/* Adds a REAL block sum into the float64 total and clears it. */
static void CAT(flush_, SUFFIX)(REAL *block, double *total, int64_t len) {
    for (int64_t i = 0; i < len; i++) {
        total[i] += (double)block[i];
        block[i] = 0;
    }
}

/* ---- softmax cross-entropy ------------------------------------------------------------ */

/* Scores, softmax and d loss / d score of one tile of TILE rows (the last tile may have
 * fewer valid rows, nr; the others point at a zero row and count for nothing), NV class
 * vectors at once: W is d x cp (cp = NV * LANES columns, padded with zeros), keep[v] masks
 * the real classes of vector v. Writes the TILE x cp rows of p - onehot(y) to D, adds them
 * to gb, multiplies each row's sum of exps into *sprod and returns the rest of the loss.
 * Indexes into acc are compile-time constants only, so the accumulators stay in registers. */
static inline __attribute__((always_inline)) double CAT(softmax_tile_, SUFFIX)(
    const REAL *const *rows, int nr, int64_t d, const int64_t *y, const REAL *W, const REAL *b,
    int64_t cp, const IVEC_T *keep, const int NV, REAL *D, REAL *gb, double *sprod) {
    VEC_T acc[TILE][MAX_NV];
    for (int v = 0; v < NV; v++) {
        VEC_T bv = CAT(load_, SUFFIX)(b + v * LANES);
        for (int r = 0; r < TILE; r++) acc[r][v] = bv;
    }
#pragma GCC unroll 2
    for (int64_t k = 0; k < d; k++) {
        VEC_T w[MAX_NV];
        for (int v = 0; v < NV; v++) w[v] = CAT(load_, SUFFIX)(W + k * cp + v * LANES);
        for (int r = 0; r < TILE; r++) {
            VEC_T x = CAT(splat_, SUFFIX)(rows[r][k]);
            for (int v = 0; v < NV; v++) acc[r][v] += x * w[v];
        }
    }
    /* In phases over the whole tile, not row by row: the TILE x NV exp polynomials are
     * independent chains the core overlaps, where one row's three would wait on each other. */
    VEC_T lane;
    for (int i = 0; i < LANES; i++) lane[i] = (REAL)i;
    VEC_T picked = CAT(splat_, SUFFIX)(0);
    for (int r = 0; r < TILE; r++) {
        VEC_T mv = (VEC_T)((IVEC_T)acc[r][0] & keep[0]);
        mv += (VEC_T)((IVEC_T)CAT(splat_, SUFFIX)(-INFINITY) & ~keep[0]);
        for (int v = 1; v < NV; v++) mv = CAT(vmax_, SUFFIX)(mv, acc[r][v]);
        VEC_T m = CAT(splat_, SUFFIX)(CAT(hmax_, SUFFIX)(mv));
        for (int v = 0; v < NV; v++) {
            acc[r][v] -= m; /* the loss picks z_y - m: the max cancels */
            if (r < nr) {
                IVEC_T is_y = lane == CAT(splat_, SUFFIX)((REAL)(y[r] - v * LANES));
                picked += (VEC_T)((IVEC_T)acc[r][v] & is_y);
            }
        }
    }
    for (int r = 0; r < TILE; r++)
        for (int v = 0; v < NV; v++)
            acc[r][v] = (VEC_T)((IVEC_T)CAT(vexp_, SUFFIX)(acc[r][v]) & keep[v]);
    for (int r = 0; r < TILE; r++) {
        VEC_T sv = acc[r][0];
        for (int v = 1; v < NV; v++) sv += acc[r][v];
        REAL s = CAT(hsum_, SUFFIX)(sv);
        VEC_T inv = CAT(splat_, SUFFIX)(r < nr ? (REAL)1 / s : 0);
        VEC_T one = CAT(splat_, SUFFIX)(r < nr ? 1 : 0);
        if (r < nr) *sprod *= (double)s; /* log(s) is taken of products (see the caller) */
        for (int v = 0; v < NV; v++) {
            IVEC_T is_y = lane == CAT(splat_, SUFFIX)((REAL)(y[r] - v * LANES));
            acc[r][v] = acc[r][v] * inv - (VEC_T)((IVEC_T)one & is_y);
            CAT(store_, SUFFIX)(D + r * cp + v * LANES, acc[r][v]);
        }
    }
    for (int v = 0; v < NV; v++) {
        VEC_T g = CAT(load_, SUFFIX)(gb + v * LANES);
        for (int r = 0; r < TILE; r++) g += acc[r][v];
        CAT(store_, SUFFIX)(gb + v * LANES, g);
    }
    return -(double)CAT(hsum_, SUFFIX)(picked);
}

/* G64 (d x cp) += Xb.T @ D for a block of m rows still in cache: kt features x NV class
 * vectors of G are held in registers across all m rows, so each row costs kt broadcasts and
 * NV loads for kt x NV multiply-adds, with no load or store of G inside the loop. */
static inline __attribute__((always_inline)) void CAT(softmax_grad_block_, SUFFIX)(
    const REAL *Xb, int64_t m, int64_t d, const REAL *D, int64_t cp, const int NV,
    double *G64, const char *next, int64_t next_bytes) {
    const int kt_full = NV == 1 ? 8 : NV == 2 ? 6 : NV == 3 ? 4 : 2; /* kt x NV + NV + 1 <= 16 */
    /* This loop works from cache and leaves the memory bus idle: meanwhile, bring the next
     * block (next_bytes from next) into L2, a line every other row, so few are in flight. */
    const int64_t lines = (next_bytes + 63) / 64;
    int64_t k0 = 0, fetched = 0;
    for (; k0 + kt_full <= d; k0 += kt_full) {
        VEC_T acc[8][MAX_NV];
        for (int kk = 0; kk < kt_full; kk++)
            for (int v = 0; v < NV; v++) acc[kk][v] = CAT(splat_, SUFFIX)(0);
        const REAL *x = Xb + k0;
        const REAL *Dr = D;
#pragma GCC unroll 2
        for (int64_t r = 0; r < m; r++, x += d, Dr += cp) {
            if ((r & 1) && fetched < lines) __builtin_prefetch(next + 64 * fetched++, 0, 2);
            VEC_T dv[MAX_NV];
            for (int v = 0; v < NV; v++) dv[v] = CAT(load_, SUFFIX)(Dr + v * LANES);
            for (int kk = 0; kk < kt_full; kk++) {
                VEC_T xb = CAT(splat_, SUFFIX)(x[kk]);
                for (int v = 0; v < NV; v++) acc[kk][v] += xb * dv[v];
            }
        }
        for (int kk = 0; kk < kt_full; kk++)
            for (int v = 0; v < NV; v++)
                for (int i = 0; i < LANES; i++)
                    G64[(k0 + kk) * cp + v * LANES + i] += (double)acc[kk][v][i];
    }
    for (; k0 < d; k0++) { /* the last d % kt_full features, one at a time */
        VEC_T acc[MAX_NV];
        for (int v = 0; v < NV; v++) acc[v] = CAT(splat_, SUFFIX)(0);
        for (int64_t r = 0; r < m; r++) {
            VEC_T xb = CAT(splat_, SUFFIX)(Xb[r * d + k0]);
            for (int v = 0; v < NV; v++) acc[v] += xb * CAT(load_, SUFFIX)(D + r * cp + v * LANES);
        }
        for (int v = 0; v < NV; v++)
            for (int i = 0; i < LANES; i++) G64[k0 * cp + v * LANES + i] += (double)acc[v][i];
    }
}

/* Rows per block of the softmax kernel: the block of X is read a second time (for the
 * gradient) while it is still in L2, and its D rows fit the work buffer (BLOCK rows). */
static int64_t CAT(softmax_block_rows_, SUFFIX)(int64_t d) {
    int64_t rows = (256 * 1024) / (d * (int64_t)sizeof(REAL));
    rows -= rows % TILE;
    return rows < TILE ? TILE : (rows > BLOCK ? BLOCK : rows);
}

/* The softmax kernel for a constant NV (see lg_softmax_*): scores and D tile by tile, then
 * the gradient, block by block. */
static inline __attribute__((always_inline)) double CAT(softmax_nv_, SUFFIX)(
    const REAL *X, int64_t n, int64_t d, const int64_t *y, const REAL *W, const REAL *b,
    int64_t cp, const IVEC_T *keep, const int NV, double *G64, REAL *gb, REAL *D,
    const REAL *zero, double *gb64) {
    const int64_t block = CAT(softmax_block_rows_, SUFFIX)(d);
    double loss = 0.0, sprod = 1.0; /* each s is in [1, C]: a product of rows overflows late */
    for (int64_t lo = 0; lo < n; lo += block) {
        int64_t hi = lo + block < n ? lo + block : n;
        for (int64_t i = lo; i < hi; i += TILE) {
            if (sprod > 0x1p900) {
                loss += log(sprod);
                sprod = 1.0;
            }
            int nr = hi - i < TILE ? (int)(hi - i) : TILE;
            if (lo == 0) /* later blocks were brought into L2 by the gradient loop */
                prefetch_rows(X, i + PREFETCH_TILES * TILE, n, d * (int64_t)sizeof(REAL));
            const REAL *rows[TILE];
            int64_t ys[TILE];
            for (int r = 0; r < TILE; r++) {
                rows[r] = r < nr ? X + (i + r) * d : zero;
                ys[r] = r < nr ? y[i + r] : 0;
            }
            loss += CAT(softmax_tile_, SUFFIX)(rows, nr, d, ys, W, b, cp, keep, NV,
                                               D + (i - lo) * cp, gb, &sprod);
        }
        int64_t next_rows = hi + block < n ? block : n - hi;
        CAT(softmax_grad_block_, SUFFIX)(X + lo * d, hi - lo, d, D, cp, NV, G64,
                                         (const char *)(X + hi * d),
                                         next_rows * d * (int64_t)sizeof(REAL));
        CAT(flush_, SUFFIX)(gb, gb64, cp);
    }
    return loss + log(sprod);
}

/* Sum over rows of the softmax cross-entropy and, added into G64 (d x cp) and gb64 (cp),
 * the sums of x_i (p_i - onehot(y_i)). W (d x cp) and b (cp) padded with zeros past C;
 * work holds lg_softmax_work(d, cp) REALs. Returns the loss sum; -1 if cp is not a
 * multiple of LANES or exceeds the tile. */
double CAT(lg_softmax_, SUFFIX)(const REAL *X, int64_t n, int64_t d, const int64_t *y,
                                const REAL *W, const REAL *b, int64_t C, int64_t cp,
                                double *G64, double *gb64, REAL *work) {
    const int NV = (int)(cp / LANES);
    if (cp % LANES != 0 || NV < 1 || NV > MAX_NV) return -1.0;
    REAL *D = work, *gb = work + BLOCK * cp, *zero = work + BLOCK * cp + cp;
    for (int64_t i = 0; i < cp + d; i++) gb[i] = 0;
    IVEC_T keep[MAX_NV];
    for (int v = 0; v < MAX_NV; v++)
        for (int i = 0; i < LANES; i++) keep[v][i] = v * LANES + i < C ? -1 : 0;
    switch (NV) { /* a constant NV in each: the accumulators stay in registers */
    case 1: return CAT(softmax_nv_, SUFFIX)(X, n, d, y, W, b, cp, keep, 1, G64, gb, D, zero, gb64);
    case 2: return CAT(softmax_nv_, SUFFIX)(X, n, d, y, W, b, cp, keep, 2, G64, gb, D, zero, gb64);
    case 3: return CAT(softmax_nv_, SUFFIX)(X, n, d, y, W, b, cp, keep, 3, G64, gb, D, zero, gb64);
    default:
        return CAT(softmax_nv_, SUFFIX)(X, n, d, y, W, b, cp, keep, MAX_NV, G64, gb, D, zero, gb64);
    }
}

/* ---- linear and logistic regression ---------------------------------------------------- */

/* Sum over rows of the loss (kind 0: 0.5 (z - y)^2; kind 1: binary cross-entropy on the logit
 * z) and, added into g64 (d) and *gb64, the sums of x_i r_i and r_i, r_i = d loss / d z_i.
 * work holds d REALs. */
double CAT(lg_affine_, SUFFIX)(const REAL *X, int64_t n, int64_t d, const REAL *y,
                                      const REAL *w, REAL b, int kind, double *g64,
                                      double *gb64, REAL *work) {
    REAL *g = work;
    const int64_t dv = d - d % LANES;
    for (int64_t j = 0; j < d; j++) g[j] = 0;
    double loss = 0.0, gb = 0.0, lprod = 1.0;
    for (int64_t lo = 0; lo < n; lo += BLOCK) {
        int64_t hi = lo + BLOCK < n ? lo + BLOCK : n;
        for (int64_t i = lo; i < hi; i += TILE) {
            int nr = hi - i < TILE ? (int)(hi - i) : TILE;
            prefetch_rows(X, i + PREFETCH_TILES * TILE, n, d * (int64_t)sizeof(REAL));
            const REAL *x[TILE];
            for (int r = 0; r < TILE; r++) x[r] = X + (i + (r < nr ? r : 0)) * d;
            VEC_T acc[TILE];
            for (int r = 0; r < TILE; r++) acc[r] = CAT(splat_, SUFFIX)(0);
            for (int64_t j = 0; j < dv; j += LANES) {
                VEC_T wv = CAT(load_, SUFFIX)(w + j);
                for (int r = 0; r < TILE; r++) acc[r] += CAT(load_, SUFFIX)(x[r] + j) * wv;
            }
            REAL z[TILE], res[TILE];
            VEC_T neg_abs = CAT(splat_, SUFFIX)(0);
            for (int r = 0; r < TILE; r++) {
                z[r] = CAT(hsum_, SUFFIX)(acc[r]) + b;
                for (int64_t j = dv; j < d; j++) z[r] += x[r][j] * w[j];
                neg_abs[r] = z[r] < 0 ? z[r] : -z[r];
            }
            /* logistic: e = exp(-|z|) for the tile's rows in one vector exp */
            VEC_T e = kind == 0 ? neg_abs : CAT(vexp_, SUFFIX)(neg_abs);
            for (int r = 0; r < TILE; r++) {
                if (r >= nr) {
                    res[r] = 0;
                    continue;
                }
                REAL t = y[i + r];
                if (kind == 0) {
                    res[r] = z[r] - t;
                    loss += 0.5 * (double)res[r] * (double)res[r];
                } else {
                    /* softplus(z) - t z, softplus(z) = max(z, 0) + log(1 + e); the logs are
                     * taken of products of 1 + e (each in [1, 2]), not row by row */
                    loss += (double)(z[r] > 0 ? z[r] : 0) - (double)t * (double)z[r];
                    lprod *= 1.0 + (double)e[r];
                    REAL s = (z[r] >= 0 ? (REAL)1 : e[r]) / (1 + e[r]);
                    res[r] = s - t;
                }
                gb += (double)res[r];
            }
            if (lprod > 0x1p900) {
                loss += log(lprod);
                lprod = 1.0;
            }
            for (int64_t j = 0; j < dv; j += LANES) {
                VEC_T gv = CAT(load_, SUFFIX)(g + j);
                for (int r = 0; r < TILE; r++)
                    gv += CAT(load_, SUFFIX)(x[r] + j) * CAT(splat_, SUFFIX)(res[r]);
                CAT(store_, SUFFIX)(g + j, gv);
            }
            for (int64_t j = dv; j < d; j++)
                for (int r = 0; r < TILE; r++) g[j] += x[r][j] * res[r];
        }
        CAT(flush_, SUFFIX)(g, g64, d);
    }
    *gb64 += gb;
    return loss + log(lprod);
}

#undef VEC_T
#undef UVEC_T
#undef IVEC_T
#undef LANES


/* One dtype's fused loss-and-gradient kernels; kernels.c includes this file once for
 * double and once for float (REAL, SUFFIX, and the exp constants are set there).
 *
 * Each kernel reads every row of X from memory once. Linear and logistic: a tile of TILE
 * rows is loaded, its scores computed, turned into d loss / d score, and its outer product
 * added to the gradient while the tile is still in L1. Softmax: a block of rows (in L2) gets
 * its scores and d loss / d score rows (D), then its gradient X_b^T D, with the features as
 * vector lanes throughout. float32 gradients are summed in float over at most BLOCK rows and
 * then in double, so float32 data keeps float64 totals. */

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

/* a > b ? a : b, lane by lane (so b when either is NaN): on AVX one instruction, where GCC
 * makes a compare and a blend of the portable form */
static inline VEC_T CAT(vmax_, SUFFIX)(VEC_T a, VEC_T b) {
#if defined(__x86_64__) && defined(__AVX__)
#if LANES_N == 4
    return __builtin_ia32_maxpd256(a, b);
#else
    return __builtin_ia32_maxps256(a, b);
#endif
#else
    IVEC_T a_wins = a > b;
    return (VEC_T)(((IVEC_T)a & a_wins) | ((IVEC_T)b & ~a_wins));
#endif
}

/* exp(x) for x <= 0, lane by lane, within 2 ulp: 2^n P(r) with x = n ln2 + r, |r| <= ln2/2,
 * P a polynomial of degree EXP_DEGREE close to the minimax one; n is added to P's exponent
 * bits, which stays a normal number from EXP_MIN on. Below EXP_MIN the result is 0. */
static inline VEC_T CAT(vexp_, SUFFIX)(VEC_T x) {
    const VEC_T lo = CAT(splat_, SUFFIX)(EXP_MIN);
    const IVEC_T below = x < lo;
    x = CAT(vmax_, SUFFIX)(lo, x); /* NaN stays NaN */
    const VEC_T shift = CAT(splat_, SUFFIX)(ROUND_SHIFT);
    VEC_T kf = x * CAT(splat_, SUFFIX)((REAL)1.4426950408889634) + shift;
    IVEC_T n = (IVEC_T)kf - (IVEC_T)shift;
    kf -= shift;
    VEC_T r = x - kf * CAT(splat_, SUFFIX)(LN2_HI) - kf * CAT(splat_, SUFFIX)(LN2_LO);
    /* P(r) by Estrin's scheme: terms paired as t_2i + t_2i+1 r, then pairs of those with r^2,
     * and so on: 4 (float64) / 3 (float32) multiply-adds deep rather than EXP_DEGREE, so a
     * tile's exps are not a chain of latencies */
    VEC_T t[EXP_DEGREE + 1], pw = r;
    int terms = EXP_DEGREE + 1;
    for (int i = 0; i < terms; i++) t[i] = CAT(splat_, SUFFIX)(EXP_COEF[i]);
    while (terms > 1) {
        for (int i = 0; i < terms / 2; i++) t[i] = t[2 * i] + t[2 * i + 1] * pw;
        if (terms % 2) t[terms / 2] = t[terms - 1];
        terms = (terms + 1) / 2;
        pw *= pw;
    }
    return (VEC_T)(((IVEC_T)t[0] + (n << MANT_BITS)) & ~below);
}

static inline REAL CAT(hsum_, SUFFIX)(VEC_T v) {
    REAL s = 0;
    for (int i = 0; i < LANES; i++) s += v[i];
    return s;
}

/* Lane i of the result is the sum of the lanes of v[i]: a transpose by shuffles, with the
 * sums taken along the way. */
static inline VEC_T CAT(transpose_sum_, SUFFIX)(const VEC_T *v) {
#if LANES_N == 4
    VEC_T a = SHUF(v[0], v[1], 0, 4, 2, 6) + SHUF(v[0], v[1], 1, 5, 3, 7);
    VEC_T b = SHUF(v[2], v[3], 0, 4, 2, 6) + SHUF(v[2], v[3], 1, 5, 3, 7);
    return SHUF(a, b, 0, 1, 4, 5) + SHUF(a, b, 2, 3, 6, 7);
#else
    VEC_T p[4], q[2];
    for (int i = 0; i < 4; i++) /* unpcklps + unpckhps: lanes 0, 2 of each half hold v[2i]'s */
        p[i] = SHUF(v[2 * i], v[2 * i + 1], 0, 8, 1, 9, 4, 12, 5, 13) +
               SHUF(v[2 * i], v[2 * i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    for (int i = 0; i < 2; i++)
        q[i] = SHUF(p[2 * i], p[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
               SHUF(p[2 * i], p[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
    return SHUF(q[0], q[1], 0, 1, 2, 3, 8, 9, 10, 11) + SHUF(q[0], q[1], 4, 5, 6, 7, 12, 13, 14, 15);
#endif
}

/* Transposes the LANES x LANES block v (v[i] lane j becomes v[j] lane i) by shuffles. */
static inline void CAT(transpose_, SUFFIX)(VEC_T *v) {
#if LANES_N == 4
    VEC_T t0 = SHUF(v[0], v[1], 0, 4, 2, 6), t1 = SHUF(v[0], v[1], 1, 5, 3, 7);
    VEC_T t2 = SHUF(v[2], v[3], 0, 4, 2, 6), t3 = SHUF(v[2], v[3], 1, 5, 3, 7);
    v[0] = SHUF(t0, t2, 0, 1, 4, 5);
    v[1] = SHUF(t1, t3, 0, 1, 4, 5);
    v[2] = SHUF(t0, t2, 2, 3, 6, 7);
    v[3] = SHUF(t1, t3, 2, 3, 6, 7);
#else
    /* one instruction each on AVX: unpcklps / unpckhps, shufps, vperm2f128 */
    VEC_T a[4], b[4], p[8];
    for (int k = 0; k < 4; k++) { /* columns (0,1|4,5) and (2,3|6,7) of rows 2k, 2k+1 */
        a[k] = SHUF(v[2 * k], v[2 * k + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        b[k] = SHUF(v[2 * k], v[2 * k + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int h = 0; h < 2; h++) { /* columns (0|4), (1|5), (2|6), (3|7) of rows 4h..4h+3 */
        p[4 * h] = SHUF(a[2 * h], a[2 * h + 1], 0, 1, 8, 9, 4, 5, 12, 13);
        p[4 * h + 1] = SHUF(a[2 * h], a[2 * h + 1], 2, 3, 10, 11, 6, 7, 14, 15);
        p[4 * h + 2] = SHUF(b[2 * h], b[2 * h + 1], 0, 1, 8, 9, 4, 5, 12, 13);
        p[4 * h + 3] = SHUF(b[2 * h], b[2 * h + 1], 2, 3, 10, 11, 6, 7, 14, 15);
    }
    for (int q = 0; q < 4; q++) {
        v[q] = SHUF(p[q], p[q + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        v[q + 4] = SHUF(p[q], p[q + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
#endif
}

/* Every lane: the sum / the largest of v's lanes (shuffles, no lane-by-lane extraction). */
static inline VEC_T CAT(allsum_, SUFFIX)(VEC_T v) {
#if LANES_N == 8
    v += SHUF(v, v, 4, 5, 6, 7, 0, 1, 2, 3);
    v += SHUF(v, v, 2, 3, 0, 1, 6, 7, 4, 5);
    return v + SHUF(v, v, 1, 0, 3, 2, 5, 4, 7, 6);
#else
    v += SHUF(v, v, 2, 3, 0, 1);
    return v + SHUF(v, v, 1, 0, 3, 2);
#endif
}

static inline VEC_T CAT(allmax_, SUFFIX)(VEC_T v) {
#if LANES_N == 8
    v = CAT(vmax_, SUFFIX)(v, SHUF(v, v, 4, 5, 6, 7, 0, 1, 2, 3));
    v = CAT(vmax_, SUFFIX)(v, SHUF(v, v, 2, 3, 0, 1, 6, 7, 4, 5));
    return CAT(vmax_, SUFFIX)(v, SHUF(v, v, 1, 0, 3, 2, 5, 4, 7, 6));
#else
    v = CAT(vmax_, SUFFIX)(v, SHUF(v, v, 2, 3, 0, 1));
    return CAT(vmax_, SUFFIX)(v, SHUF(v, v, 1, 0, 3, 2));
#endif
}

/* Adds a REAL block sum into the float64 total and clears it. */
static void CAT(flush_, SUFFIX)(REAL *block, double *total, int64_t len) {
    for (int64_t i = 0; i < len; i++) {
        total[i] += (double)block[i];
        block[i] = 0;
    }
}

/* The kernels' exp on n values x <= 0 into out: exported so its accuracy can be tested. */
void CAT(lg_exp_, SUFFIX)(const REAL *x, int64_t n, REAL *out) {
    for (int64_t i = 0; i < n; i += LANES) {
        VEC_T v = CAT(splat_, SUFFIX)(0);
        for (int l = 0; l < LANES && i + l < n; l++) v[l] = x[i + l];
        v = CAT(vexp_, SUFFIX)(v);
        for (int l = 0; l < LANES && i + l < n; l++) out[i + l] = v[l];
    }
}

/* ---- softmax cross-entropy ------------------------------------------------------------ */

/* Features are the vector lanes, so no lane is spent on padding classes (10 classes as
 * vectors of classes would fill 12 float64 / 16 float32 lanes of multiply-adds). A row's
 * score for class c is its dot product with column c of W, taken a vector of features at a
 * time against Wt (W transposed, in chunks of classes; within a chunk of nc classes, the nc
 * vectors of feature vector k are adjacent: one pointer walks them); the gradient is summed as
 * Gt[c] += D[i][c] x_i, again a vector of features at a time. When d is not a multiple of
 * LANES, a row's last vector is the one ending at column d: it overlaps the one before, and
 * the lanes they share are zero in Wt and skipped when Gt is added to the caller's sums. */

/* Scores of the m rows of Xb for the chunk of NC classes of Wt at wt (nk groups of NC
 * vectors, feature vector by feature vector): the NC dot products in registers, reduced
 * lane-wise and stored as whole vectors at S (row stride cp); lanes past class NC hold
 * zeros, which a later chunk overwrites, or which are the reference class's score (0) and
 * the padding's (lg_softmax_ relies on them). Each row also asks for the row
 * PF_BYTES ahead (rows_left rows remain from Xb on). */
static inline __attribute__((always_inline)) void CAT(sm_scores_, SUFFIX)(
    const REAL *Xb, int64_t m, int64_t d, int64_t nk, const REAL *wt, const int NC, REAL *S,
    int64_t cp, int prefetch, int64_t rows_left) {
    const int64_t row_bytes = d * (int64_t)sizeof(REAL);
    const int64_t ahead = (PF_BYTES + row_bytes - 1) / row_bytes;
    for (int64_t i = 0; i < m; i++) {
        const REAL *x = Xb + i * d;
        if (prefetch && i + ahead < rows_left)
            for (int64_t off = 0; off < row_bytes; off += 64)
                __builtin_prefetch((const char *)(x + ahead * d) + off, 0, 3);
        VEC_T acc[SM_NC];
        for (int c = 0; c < NC; c++) acc[c] = CAT(splat_, SUFFIX)(0);
        const REAL *w = wt; /* the NC vectors of feature vector k, then of k + 1 */
#pragma GCC unroll 2
        for (int64_t k = 0; k < nk - 1; k++, w += NC * LANES) {
            VEC_T xv = CAT(load_, SUFFIX)(x + k * LANES);
            for (int c = 0; c < NC; c++) acc[c] += xv * CAT(load_, SUFFIX)(w + c * LANES);
        }
        VEC_T xv = CAT(load_, SUFFIX)(x + d - LANES);
        for (int c = 0; c < NC; c++) acc[c] += xv * CAT(load_, SUFFIX)(w + c * LANES);
        for (int g = 0; g < NC; g += LANES) {
            VEC_T grp[LANES];
            for (int l = 0; l < LANES; l++)
                grp[l] = g + l < NC ? acc[g + l] : CAT(splat_, SUFFIX)(0);
            CAT(store_, SUFFIX)(S + i * cp + g, CAT(transpose_sum_, SUFFIX)(grp));
        }
    }
}

/* sm_scores_ for a chunk of nc <= SM_NC classes, each count with its own constant. */
static void CAT(sm_scores_chunk_, SUFFIX)(const REAL *Xb, int64_t m, int64_t d, int64_t nk,
                                          const REAL *wt, int nc, REAL *S, int64_t cp,
                                          int prefetch, int64_t rows_left) {
#define SM_CASE(N)                                                                             \
    case N:                                                                                    \
        CAT(sm_scores_, SUFFIX)(Xb, m, d, nk, wt, N, S, cp, prefetch, rows_left);             \
        break;
    switch (nc) {
        SM_CASE(1) SM_CASE(2) SM_CASE(3) SM_CASE(4) SM_CASE(5) SM_CASE(6)
        SM_CASE(7) SM_CASE(8) SM_CASE(9) SM_CASE(10) SM_CASE(11) SM_CASE(12)
    }
#undef SM_CASE
}

/* Turns m rows of scores S (stride cp, bias not yet added; bp holds b and -inf past class C)
 * into D = softmax - onehot(y), adds D's rows to gb, multiplies each row's sum of exps into
 * *sprod and returns the rest of the loss. For rows of any width: in phases over all m rows,
 * so the exps of many rows are independent work the core overlaps; the one-hot terms are
 * vector compares, not scalar updates of values just stored as vectors (those stall). */
static double CAT(sm_softmax_rows_, SUFFIX)(REAL *S, int64_t m, int64_t cp, const int64_t *y,
                                            const REAL *bp, REAL *gb, double *sprod) {
    const int64_t nv = cp / LANES;
    VEC_T lane, picked = CAT(splat_, SUFFIX)(0), one = CAT(splat_, SUFFIX)(1);
    for (int l = 0; l < LANES; l++) lane[l] = (REAL)l;
    for (int64_t i = 0; i < m; i++) {
        REAL *z = S + i * cp;
        VEC_T mv = CAT(splat_, SUFFIX)(-INFINITY);
        for (int64_t v = 0; v < nv; v++) {
            VEC_T zv = CAT(load_, SUFFIX)(z + v * LANES) + CAT(load_, SUFFIX)(bp + v * LANES);
            CAT(store_, SUFFIX)(z + v * LANES, zv);
            mv = CAT(vmax_, SUFFIX)(mv, zv);
        }
        VEC_T mx = CAT(allmax_, SUFFIX)(mv), yv = CAT(splat_, SUFFIX)((REAL)y[i]);
        for (int64_t v = 0; v < nv; v++) {
            VEC_T t = CAT(load_, SUFFIX)(z + v * LANES) - mx;
            CAT(store_, SUFFIX)(z + v * LANES, t);
            /* the loss picks z_y - max: the max cancels */
            picked += (VEC_T)((IVEC_T)t & (lane + (REAL)(v * LANES) == yv));
        }
    }
    for (int64_t j = 0; j < m * nv; j++)
        CAT(store_, SUFFIX)(S + j * LANES, CAT(vexp_, SUFFIX)(CAT(load_, SUFFIX)(S + j * LANES)));
    double logs = 0;
    for (int64_t i = 0; i < m; i++) {
        REAL *z = S + i * cp;
        VEC_T sv = CAT(load_, SUFFIX)(z);
        for (int64_t v = 1; v < nv; v++) sv += CAT(load_, SUFFIX)(z + v * LANES);
        VEC_T s = CAT(allsum_, SUFFIX)(sv), inv = one / s, yv = CAT(splat_, SUFFIX)((REAL)y[i]);
        *sprod *= (double)s[0]; /* log(s) is taken of products (see the caller) */
        for (int64_t v = 0; v < nv; v++) {
            IVEC_T is_y = lane + (REAL)(v * LANES) == yv;
            VEC_T p = CAT(load_, SUFFIX)(z + v * LANES) * inv - (VEC_T)((IVEC_T)one & is_y);
            CAT(store_, SUFFIX)(z + v * LANES, p);
            CAT(store_, SUFFIX)(gb + v * LANES, CAT(load_, SUFFIX)(gb + v * LANES) + p);
        }
        fold_log(sprod, &logs);
    }
    return logs - (double)CAT(allsum_, SUFFIX)(picked)[0];
}

/* sm_softmax_rows_ for LANES rows of NV class vectors each (a constant), with the rows as
 * vector lanes: the tile is transposed in registers, so a vector holds one class of LANES
 * rows, and only real classes are exponentiated (10 classes: 10 exps for LANES rows, where
 * vectors of classes would take 12 / 16 lanes a row); no sum or max across lanes. gbt holds
 * one vector of row sums per class. */
static inline __attribute__((always_inline)) void CAT(sm_softmax_tile_, SUFFIX)(
    REAL *S, int64_t cp, int64_t C, const int64_t *y, const REAL *bp, const int NV, REAL *gbt,
    VEC_T *picked, double *sprod) {
    VEC_T T[SM_MAXV * LANES], yv, one = CAT(splat_, SUFFIX)(1);
    for (int v = 0; v < NV; v++) {
        for (int r = 0; r < LANES; r++) T[v * LANES + r] = CAT(load_, SUFFIX)(S + r * cp + v * LANES);
        CAT(transpose_, SUFFIX)(T + v * LANES);
    }
    for (int r = 0; r < LANES; r++) yv[r] = (REAL)y[r];
    VEC_T mx = CAT(splat_, SUFFIX)(-INFINITY);
    for (int c = 0; c < NV * LANES; c++) {
        if (c >= C) break;
        T[c] += CAT(splat_, SUFFIX)(bp[c]);
        mx = CAT(vmax_, SUFFIX)(mx, T[c]);
    }
    VEC_T s = CAT(splat_, SUFFIX)(0);
    for (int c = 0; c < NV * LANES; c++) {
        if (c >= C) break;
        T[c] -= mx;
        /* the loss picks z_y - max: the max cancels */
        *picked += (VEC_T)((IVEC_T)T[c] & (yv == (REAL)c));
        T[c] = CAT(vexp_, SUFFIX)(T[c]);
        s += T[c];
    }
    double prod[LANES]; /* logs of products (see the caller), multiplied as a tree */
    for (int r = 0; r < LANES; r++) prod[r] = (double)s[r];
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int r = 0; r < w; r++) prod[r] *= prod[r + w];
    *sprod *= prod[0];
    VEC_T inv = one / s;
    for (int c = 0; c < NV * LANES; c++) {
        if (c < C) {
            T[c] = T[c] * inv - (VEC_T)((IVEC_T)one & (yv == (REAL)c));
            CAT(store_, SUFFIX)(gbt + c * LANES, CAT(load_, SUFFIX)(gbt + c * LANES) + T[c]);
        } else {
            T[c] = CAT(splat_, SUFFIX)(0);
        }
    }
    for (int v = 0; v < NV; v++) {
        CAT(transpose_, SUFFIX)(T + v * LANES);
        for (int r = 0; r < LANES; r++) CAT(store_, SUFFIX)(S + r * cp + v * LANES, T[v * LANES + r]);
    }
}

static inline __attribute__((always_inline)) double CAT(sm_softmax_nv_, SUFFIX)(
    REAL *S, int64_t m, int64_t cp, int64_t C, const int64_t *y, const REAL *bp, REAL *gb,
    REAL *gbt, double *sprod, const int NV) {
    VEC_T picked = CAT(splat_, SUFFIX)(0);
    double logs = 0, prod = *sprod; /* a local: S's stores cannot change it */
    int64_t i = 0;
    for (; i + LANES <= m; i += LANES) {
        CAT(sm_softmax_tile_, SUFFIX)(S + i * cp, cp, C, y + i, bp, NV, gbt, &picked, &prod);
        fold_log(&prod, &logs);
    }
    *sprod = prod;
    for (int64_t c = 0; c < C; c++) {
        gb[c] += CAT(allsum_, SUFFIX)(CAT(load_, SUFFIX)(gbt + c * LANES))[0];
        CAT(store_, SUFFIX)(gbt + c * LANES, CAT(splat_, SUFFIX)(0));
    }
    logs -= (double)CAT(allsum_, SUFFIX)(picked)[0];
    return logs + CAT(sm_softmax_rows_, SUFFIX)(S + i * cp, m - i, cp, y + i, bp, gb, sprod);
}

/* Turns m rows of scores S into D (see sm_softmax_rows_), LANES rows at a time transposed
 * in registers when a row is at most SM_MAXV vectors of classes. */
static double CAT(sm_softmax_, SUFFIX)(REAL *S, int64_t m, int64_t cp, int64_t C,
                                       const int64_t *y, const REAL *bp, REAL *gb, REAL *gbt,
                                       double *sprod) {
    switch (cp / LANES) {
    case 1: return CAT(sm_softmax_nv_, SUFFIX)(S, m, cp, C, y, bp, gb, gbt, sprod, 1);
    case 2: return CAT(sm_softmax_nv_, SUFFIX)(S, m, cp, C, y, bp, gb, gbt, sprod, 2);
    case 3: return CAT(sm_softmax_nv_, SUFFIX)(S, m, cp, C, y, bp, gb, gbt, sprod, 3);
    case 4: return CAT(sm_softmax_nv_, SUFFIX)(S, m, cp, C, y, bp, gb, gbt, sprod, 4);
    default: return CAT(sm_softmax_rows_, SUFFIX)(S, m, cp, y, bp, gb, sprod);
    }
}

/* Gt[c][k] += sum over the m rows of D[r][c] x_r[vector k], for classes [c0, c0 + CC) and
 * feature vectors [k0, k0 + KT) (Gt: C rows of nk vectors, stride ws): the KT x CC sums stay
 * in registers over the rows, so a row costs KT loads and CC broadcasts for KT x CC
 * multiply-adds. */
static inline __attribute__((always_inline)) void CAT(sm_grad_tile_, SUFFIX)(
    const REAL *Xb, int64_t m, int64_t d, int64_t nk, const REAL *D, int64_t cp, int64_t c0,
    const int CC, int64_t k0, const int KT, REAL *Gt, int64_t ws) {
    VEC_T acc[SM_GK][SM_GC1];
    int64_t off[SM_GK];
    for (int kk = 0; kk < KT; kk++) {
        off[kk] = k0 + kk == nk - 1 ? d - LANES : (k0 + kk) * LANES;
        for (int cc = 0; cc < CC; cc++)
            acc[kk][cc] = CAT(load_, SUFFIX)(Gt + (c0 + cc) * ws + (k0 + kk) * LANES);
    }
    const REAL *x = Xb, *Dr = D + c0;
#pragma GCC unroll 2
    for (int64_t r = 0; r < m; r++, x += d, Dr += cp) {
        VEC_T xv[SM_GK];
        for (int kk = 0; kk < KT; kk++) {
            xv[kk] = CAT(load_, SUFFIX)(x + off[kk]);
            KEEP_IN_REGISTER(xv[kk]); /* loaded once, not once per class */
        }
        for (int cc = 0; cc < CC; cc++) {
            VEC_T dv = CAT(splat_, SUFFIX)(Dr[cc]);
            for (int kk = 0; kk < KT; kk++) acc[kk][cc] += xv[kk] * dv;
        }
    }
    for (int kk = 0; kk < KT; kk++)
        for (int cc = 0; cc < CC; cc++)
            CAT(store_, SUFFIX)(Gt + (c0 + cc) * ws + (k0 + kk) * LANES, acc[kk][cc]);
}

/* sm_grad_tile_ with CC and KT as constants: cc classes from c0, kt vectors from k0. */
static void CAT(sm_grad_dispatch_, SUFFIX)(const REAL *Xb, int64_t m, int64_t d, int64_t nk,
                                           const REAL *D, int64_t cp, int64_t c0, int cc,
                                           int64_t k0, int kt, REAL *Gt, int64_t ws) {
#define SM_CASE(N)                                                                             \
    case N:                                                                                    \
        if (N <= SM_GC && kt == SM_GK)                                                         \
            CAT(sm_grad_tile_, SUFFIX)(Xb, m, d, nk, D, cp, c0, N, k0, SM_GK, Gt, ws);        \
        else                                                                                   \
            CAT(sm_grad_tile_, SUFFIX)(Xb, m, d, nk, D, cp, c0, N, k0, 1, Gt, ws);            \
        break;
    switch (cc) {
        SM_CASE(1) SM_CASE(2) SM_CASE(3) SM_CASE(4) SM_CASE(5) SM_CASE(6)
        SM_CASE(7) SM_CASE(8) SM_CASE(9) SM_CASE(10) SM_CASE(11) SM_CASE(12)
    }
#undef SM_CASE
}

/* Gt += Xb^T D over the m rows of a block still in L2: the features SM_GK vectors at a time,
 * the classes in balanced chunks of at most SM_GC (SM_GC1 for a lone last vector, whose
 * chunks of SM_GC would each wait on fewer sums than a multiply-add's latency covers). The
 * rows are taken SM_GRAD_BYTES at a time, so each chunk of classes after the first finds
 * them in L1. */
static void CAT(sm_grad_, SUFFIX)(const REAL *Xb, int64_t m, int64_t d, int64_t nk,
                                  const REAL *D, int64_t cp, int64_t C, REAL *Gt, int64_t ws) {
    int64_t step = SM_GRAD_BYTES / (d * (int64_t)sizeof(REAL));
    step = step < LANES ? LANES : step;
    for (int64_t r0 = 0; r0 < m; r0 += step) {
        const int64_t mr = m - r0 < step ? m - r0 : step;
        const REAL *Xr = Xb + r0 * d, *Dr = D + r0 * cp;
        for (int64_t k0 = 0; k0 < nk;) {
            const int kt = nk - k0 >= SM_GK ? SM_GK : 1;
            const int64_t most = kt == SM_GK ? SM_GC : SM_GC1, chunks = (C + most - 1) / most;
            for (int64_t g = 0, c0 = 0; g < chunks; g++) {
                const int cc = (int)(C / chunks + (g < C % chunks));
                CAT(sm_grad_dispatch_, SUFFIX)(Xr, mr, d, nk, Dr, cp, c0, cc, k0, kt, Gt, ws);
                c0 += cc;
            }
            k0 += kt;
        }
    }
}

/* G64 (d x C) += G (C - 1 rows of nk vectors; the lanes a row's last vector shares with the
 * one before are skipped), and the last class's column -= their sum (lg_softmax_): once per
 * call, it is a scatter. */
static void CAT(sm_scatter_grad_, SUFFIX)(const double *G, int64_t ws, int64_t nk, int64_t d,
                                          int64_t C, double *G64) {
    for (int64_t c = 0; c < C - 1; c++)
        for (int64_t k = 0; k < nk; k++) {
            const int last = k == nk - 1;
            const int64_t off = last ? d - LANES : k * LANES, l0 = last ? ws - d : 0;
            for (int64_t l = l0; l < LANES; l++) {
                const double g = G[c * ws + k * LANES + l];
                G64[(off + l) * C + c] += g;
                G64[(off + l) * C + C - 1] -= g;
            }
        }
}

/* Rows per block: the block of X is read again (for the gradient) while it is still in L2,
 * and a float32 gradient is summed in float over at most BLOCK rows. */
static int64_t CAT(softmax_block_rows_, SUFFIX)(int64_t d) {
    int64_t rows = (SM_BLOCK_BYTES) / (d * (int64_t)sizeof(REAL));
    rows -= rows % LANES;
    return rows < LANES ? LANES : (rows > BLOCK ? BLOCK : rows);
}

/* Whether the m classes at y are all in [0, C): checked here, as a block's labels are read,
 * rather than by the caller in a pass of its own over them. */
static int CAT(sm_labels_ok_, SUFFIX)(const int64_t *y, int64_t m, int64_t C) {
    uint64_t top = 0; /* as unsigned, a negative class is above every class */
    for (int64_t i = 0; i < m; i++) top = (uint64_t)y[i] > top ? (uint64_t)y[i] : top;
    return top < (uint64_t)C;
}

/* Sum over rows of the softmax cross-entropy of X (n x d, d >= LANES) with classes y, W
 * (d x C) and b (C), and, added into G64 (d x C) and gb64 (C), the sums of x_i (p_i -
 * onehot(y_i)) and of p_i - onehot(y_i). work holds lg_softmax_work(d, C) REALs. Returns
 * the loss sum, or -1 if d < LANES (fewer features than one vector), or -2 if a class in y
 * is outside [0, C) (gb64 then holds partial sums, G64 is untouched). Block by block: the
 * scores and D of the block's rows, then its gradient, read again from L2 and summed in Gt
 * (float64: over all rows; float32: over a block, then added to double sums Gd).
 *
 * The last class is the reference: softmax is unchanged when a row's scores all move by
 * the same amount, so the scores are taken against W's columns minus its last (x . (w_c -
 * w_last) + b_c, and b_last for the last class), and a row's D sums to 0 over the classes,
 * so the last class's gradient is minus the sum of the others'. Both products cost C - 1
 * classes of multiply-adds instead of C (10 classes: 10 % fewer). */
double CAT(lg_softmax_, SUFFIX)(const REAL *X, int64_t n, int64_t d, const int64_t *y,
                                const REAL *W, const REAL *b, int64_t C, double *G64,
                                double *gb64, REAL *work) {
    if (d < LANES || C < 1) return -1.0;
    const int64_t nk = (d + LANES - 1) / LANES, ws = nk * LANES;
    const int64_t cp = (C + LANES - 1) / LANES * LANES;
    /* each array on a 64-byte boundary, so no vector load or store straddles two lines */
    const int64_t line = 64 / sizeof(REAL), wts = (C * ws + line - 1) / line * line;
    const int64_t ss = (BLOCK * cp + line - 1) / line * line, bs = (cp + line - 1) / line * line;
    REAL *Wt = (REAL *)(((uintptr_t)work + 63) & ~(uintptr_t)63);
    REAL *Gt = Wt + wts, *S = Gt + wts, *bp = S + ss, *gb = bp + bs, *gbt = gb + bs;
    double *Gd = (double *)(gbt + bs * LANES); /* float32 only: Gt's running double sums */
    const int64_t Cs = C - 1; /* classes with scores and gradient sums (see above) */
    const int64_t chunk = Cs <= SM_NC ? Cs : SM_NC - SM_NC % LANES;
    for (int64_t c = 0; c < Cs; c++)
        for (int64_t k = 0; k < nk; k++)
            for (int64_t l = 0; l < LANES; l++) {
                const int last = k == nk - 1;
                const int64_t f = last ? d - LANES + l : k * LANES + l;
                /* chunk by chunk, feature vector by feature vector within one (sm_scores_) */
                const int64_t c0 = c / chunk * chunk, nc = Cs - c0 < chunk ? Cs - c0 : chunk;
                const int64_t at = c0 * ws + (k * nc + c - c0) * LANES + l;
                Wt[at] = last && l < ws - d ? 0 : (REAL)((double)W[f * C + c] - (double)W[f * C + Cs]);
                Gt[c * ws + k * LANES + l] = 0;
                if (sizeof(REAL) < sizeof(double)) Gd[c * ws + k * LANES + l] = 0;
            }
    for (int64_t c = 0; c < cp; c++) {
        bp[c] = c < C ? b[c] : -INFINITY; /* padding classes: exp gives 0 */
        gb[c] = 0;
        for (int64_t l = 0; l < LANES; l++) gbt[c * LANES + l] = 0;
    }
    /* score chunks (chunk, above): one for up to SM_NC classes, else whole vectors and a
     * remainder */
    const int64_t block = CAT(softmax_block_rows_, SUFFIX)(d);
    double loss = 0.0, sprod = 1.0;
    for (int64_t lo = 0; lo < n; lo += block) {
        const int64_t m = lo + block < n ? block : n - lo;
        const REAL *Xb = X + lo * d;
        if (!CAT(sm_labels_ok_, SUFFIX)(y + lo, m, C)) return -2.0;
        for (int64_t c0 = 0; c0 < Cs; c0 += chunk) {
            const int nc = (int)(Cs - c0 < chunk ? Cs - c0 : chunk);
            CAT(sm_scores_chunk_, SUFFIX)(Xb, m, d, nk, Wt + c0 * ws, nc, S + c0, cp, c0 == 0,
                                          n - lo);
        }
        /* the last class's score is 0 (plus its bias): a chunk's last vector zeroes the lanes
         * past its classes, so only a last class that starts a vector needs it written */
        if (Cs % LANES == 0)
            for (int64_t i = 0; i < m; i++) CAT(store_, SUFFIX)(S + i * cp + Cs, CAT(splat_, SUFFIX)(0));
        loss += CAT(sm_softmax_, SUFFIX)(S, m, cp, C, y + lo, bp, gb, gbt, &sprod);
        CAT(sm_grad_, SUFFIX)(Xb, m, d, nk, S, cp, Cs, Gt, ws);
        if (sizeof(REAL) < sizeof(double)) CAT(flush_, SUFFIX)(Gt, Gd, Cs * ws); /* float sums */
        CAT(flush_, SUFFIX)(gb, gb64, C); /* past C, gb stays 0 */
    }
    CAT(sm_scatter_grad_, SUFFIX)(sizeof(REAL) < sizeof(double) ? Gd : (const double *)Gt, ws,
                                  nk, d, C, G64);
    return loss + log(sprod);
}

/* ---- linear and logistic regression ---------------------------------------------------- */

/* Sum over rows of the loss (kind 0: 0.5 (z - y)^2; kind 1: binary cross-entropy on the logit
 * z) and, added into g64 (d) and *gb64, the sums of x_i r_i and r_i, r_i = d loss / d z_i.
 * work holds lg_affine_work(d) REALs. */
double CAT(lg_affine_, SUFFIX)(const REAL *X, int64_t n, int64_t d, const REAL *y,
                                      const REAL *w, REAL b, int kind, double *g64,
                                      double *gb64, REAL *work) {
    REAL *g = (REAL *)(((uintptr_t)work + 63) & ~(uintptr_t)63); /* no split vector loads */
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
            fold_log(&lprod, &loss);
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


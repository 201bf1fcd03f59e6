/* The fused kernels (lambdagrad/native/kernels.c) against plain double-precision loops,
 * compiled on their own: tests/unit/test_native_build.py builds this for the machine it runs
 * on, and for arm64 (run under qemu) where a cross compiler is installed, so the code the
 * Lambda layer ships is checked too. Prints the worst relative error; exits 1 past the
 * tolerance of the dtype. */

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

double lg_softmax_f64(const double *, int64_t, int64_t, const int64_t *, const double *,
                      const double *, int64_t, double *, double *, double *);
double lg_softmax_f32(const float *, int64_t, int64_t, const int64_t *, const float *,
                      const float *, int64_t, double *, double *, float *);
double lg_affine_f64(const double *, int64_t, int64_t, const double *, const double *, double,
                     int, double *, double *, double *);
double lg_affine_f32(const float *, int64_t, int64_t, const float *, const float *, float, int,
                     double *, double *, float *);
void lg_exp_f64(const double *, int64_t, double *);
void lg_exp_f32(const float *, int64_t, float *);
int64_t lg_softmax_work(int64_t, int64_t);
int64_t lg_affine_work(int64_t);

static double uniform(void) { return (double)rand() / RAND_MAX * 2.0 - 1.0; }

static int failed = 0;

/* Worst error relative to the largest reference value; tolerance by dtype. */
static void compare(const char *what, const double *got, const double *want, int64_t len,
                    double tolerance) {
    double scale = 1e-300, err = 0.0;
    for (int64_t i = 0; i < len; i++) scale = fmax(scale, fabs(want[i]));
    for (int64_t i = 0; i < len; i++) err = fmax(err, fabs(got[i] - want[i]) / scale);
    printf("%-34s %.2e%s\n", what, err, err > tolerance ? "  FAILED" : "");
    failed |= err > tolerance;
}

/* Plain softmax: loss sum, G (d x C) and gb (C) sums, in double. */
static double softmax_ref(const double *X, int64_t n, int64_t d, const int64_t *y,
                          const double *W, const double *b, int64_t C, double *G, double *gb) {
    double loss = 0.0, z[64]; /* C <= 64 */
    for (int64_t i = 0; i < n; i++) {
        double m = -INFINITY, s = 0.0;
        for (int64_t c = 0; c < C; c++) {
            z[c] = b[c];
            for (int64_t k = 0; k < d; k++) z[c] += X[i * d + k] * W[k * C + c];
            m = fmax(m, z[c]);
        }
        for (int64_t c = 0; c < C; c++) s += exp(z[c] - m);
        loss += log(s) + m - z[y[i]];
        for (int64_t c = 0; c < C; c++) {
            double r = exp(z[c] - m) / s - (c == y[i]);
            gb[c] += r;
            for (int64_t k = 0; k < d; k++) G[k * C + c] += X[i * d + k] * r;
        }
    }
    return loss;
}

static double affine_ref(const double *X, int64_t n, int64_t d, const double *y,
                         const double *w, double b, int logistic, double *g, double *gb) {
    double loss = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double z = b, r;
        for (int64_t k = 0; k < d; k++) z += X[i * d + k] * w[k];
        if (logistic) {
            loss += fmax(z, 0.0) + log1p(exp(-fabs(z))) - y[i] * z;
            r = 1.0 / (1.0 + exp(-z)) - y[i];
        } else {
            r = z - y[i];
            loss += 0.5 * r * r;
        }
        *gb += r;
        for (int64_t k = 0; k < d; k++) g[k] += X[i * d + k] * r;
    }
    return loss;
}

/* Softmax (C <= 64 classes) and both affine kernels on n x d data, in float64 and float32;
 * the float32 reference gets the float32-rounded data. */
static void check(int64_t n, int64_t d, int64_t C) {
    double *X = malloc(n * d * 8), *Xr = malloc(n * d * 8), *W = malloc(d * C * 8);
    double *Wr = malloc(d * C * 8), b[64], br[64], *G = malloc(d * C * 8), *Gr = malloc(d * C * 8);
    double gb[64], gbr[64], *yr = malloc(n * 8), *yb = malloc(n * 8), *t = malloc(n * 8);
    double *w = malloc(d * 8), *wr = malloc(d * 8), *g = malloc(d * 8), *gr = malloc(d * 8);
    float *Xf = malloc(n * d * 4), *Wf = malloc(d * C * 4), bf[64], *tf = malloc(n * 4);
    float *wf = malloc(d * 4);
    int64_t *y = malloc(n * 8);
    const int64_t work_len = lg_softmax_work(d, C) > lg_affine_work(d) ? lg_softmax_work(d, C)
                                                                       : lg_affine_work(d);
    double *work = malloc(work_len * 8 + 8);
    char what[64];
    for (int64_t i = 0; i < n * d; i++) X[i] = 3.0 * uniform();
    for (int64_t i = 0; i < d * C; i++) W[i] = uniform();
    for (int64_t c = 0; c < C; c++) b[c] = uniform();
    for (int64_t k = 0; k < d; k++) w[k] = uniform();
    for (int64_t i = 0; i < n; i++) {
        y[i] = rand() % C;
        yb[i] = rand() % 2;
        yr[i] = uniform() * 5;
    }
    for (int pass = 0; pass < 2; pass++) { /* float64, then float32 */
        const double tol = pass == 0 ? 1e-12 : 2e-5;
        const int64_t lanes = pass == 0 ? 4 : 8;
        /* an odd offset into work: the kernels align their arrays themselves */
        void *wk = (char *)work + (pass == 0 ? 8 : 4);
        for (int64_t i = 0; i < n * d; i++) Xr[i] = pass == 0 ? X[i] : (double)(Xf[i] = (float)X[i]);
        for (int64_t i = 0; i < d * C; i++) Wr[i] = pass == 0 ? W[i] : (double)(Wf[i] = (float)W[i]);
        for (int64_t c = 0; c < C; c++) br[c] = pass == 0 ? b[c] : (double)(bf[c] = (float)b[c]);
        for (int64_t k = 0; k < d; k++) wr[k] = pass == 0 ? w[k] : (double)(wf[k] = (float)w[k]);
        for (int64_t i = 0; i < d * C; i++) G[i] = Gr[i] = 0;
        for (int64_t c = 0; c < C; c++) gb[c] = gbr[c] = 0;
        double out = pass == 0 ? lg_softmax_f64(X, n, d, y, W, b, C, G, gb, wk)
                               : lg_softmax_f32(Xf, n, d, y, Wf, bf, C, G, gb, wk);
        snprintf(what, sizeof what, "softmax f%d n=%ld d=%ld C=%ld", pass ? 32 : 64, (long)n,
                 (long)d, (long)C);
        if (d < lanes) { /* fewer features than a vector: refused, the numpy kernel runs */
            printf("%-34s %s\n", what, out == -1.0 ? "refused" : "  FAILED (not refused)");
            failed |= out != -1.0;
        } else {
            double want = softmax_ref(Xr, n, d, y, Wr, br, C, Gr, gbr);
            compare(what, &out, &want, 1, tol);
            compare("  gradient W", G, Gr, d * C, tol);
            compare("  gradient b", gb, gbr, C, tol);
            const int64_t kept = y[n - 1];
            for (int bad = 0; bad < 2; bad++) { /* a class outside [0, C) in the last row */
                y[n - 1] = bad ? C : -1;
                out = pass == 0 ? lg_softmax_f64(X, n, d, y, W, b, C, G, gb, wk)
                                : lg_softmax_f32(Xf, n, d, y, Wf, bf, C, G, gb, wk);
                printf("  class %-28ld %s\n", (long)y[n - 1],
                       out == -2.0 ? "refused" : "  FAILED (not refused)");
                failed |= out != -2.0;
            }
            y[n - 1] = kept;
        }
        for (int logistic = 0; logistic < 2; logistic++) {
            double gbs = 0, gbsr = 0;
            for (int64_t k = 0; k < d; k++) g[k] = gr[k] = 0;
            for (int64_t i = 0; i < n; i++) {
                double v = logistic ? yb[i] : yr[i];
                t[i] = pass == 0 ? v : (double)(tf[i] = (float)v);
            }
            out = pass == 0 ? lg_affine_f64(X, n, d, t, w, 0.25, logistic, g, &gbs, wk)
                            : lg_affine_f32(Xf, n, d, tf, wf, 0.25f, logistic, g, &gbs, wk);
            double want = affine_ref(Xr, n, d, t, wr, 0.25, logistic, gr, &gbsr);
            snprintf(what, sizeof what, "%s f%d n=%ld d=%ld", logistic ? "logistic" : "linear",
                     pass ? 32 : 64, (long)n, (long)d);
            compare(what, &out, &want, 1, tol);
            compare("  gradient w", g, gr, d, tol);
            compare("  gradient b", &gbs, &gbsr, 1, tol);
        }
    }
    free(X), free(Xr), free(W), free(Wr), free(G), free(Gr), free(yr), free(yb), free(t);
    free(w), free(wr), free(g), free(gr), free(Xf), free(Wf), free(tf), free(wf), free(y);
    free(work);
}

/* The kernels' exp against libm's: within 2 ulp from the least argument it resolves (-708 /
 * -86.5) to 0, 0 below it, NaN for NaN. */
static void check_exp(void) {
    enum { N = 200003 };
    static double x[N + 3], e[N + 3];
    static float xf[N + 3], ef[N + 3];
    for (int pass = 0; pass < 2; pass++) {
        const double lo = pass ? -86.5 : -708.0, ulp = pass ? 0x1p-23 : 0x1p-52;
        for (int i = 0; i < N; i++) { /* odd i: evenly spread; even i: crowded near 0 */
            const double u = (double)i / (N - 1);
            x[i] = lo * (i % 2 ? u : pow(u, 6));
        }
        x[N] = lo * 1.5, x[N + 1] = -INFINITY, x[N + 2] = NAN;
        if (pass) {
            for (int i = 0; i < N + 3; i++) xf[i] = (float)x[i];
            lg_exp_f32(xf, N + 3, ef);
            for (int i = 0; i < N + 3; i++) x[i] = xf[i], e[i] = ef[i];
        } else {
            lg_exp_f64(x, N + 3, e);
        }
        double worst = 0;
        for (int i = 0; i < N; i++) {
            const double want = exp(x[i]), got = pass ? (double)(float)e[i] : e[i];
            const double err = fabs(got - want) / want / ulp;
            worst = err > worst ? err : worst;
        }
        const int below_ok = e[N] == 0 && e[N + 1] == 0;
        printf("exp f%d on [%g, 0]: worst %.2f ulp; below: %g; NaN: %g\n", pass ? 32 : 64, lo,
               worst, e[N], e[N + 2]);
        failed |= worst > 2.0 || !below_ok || !isnan(e[N + 2]);
    }
}

int main(void) {
    srand(7);
    check_exp();
    /* rows x features x classes: fewer features than a vector; partial last vectors (7, 13,
     * 37, 21); one and several blocks; classes in one vector, several, and more than one
     * chunk of scores (16, 17, 40) */
    const int64_t shapes[][3] = {{1, 3, 2},     {5, 7, 3},     {1003, 13, 10}, {2000, 37, 16},
                                 {4096, 64, 5}, {1500, 100, 10}, {700, 21, 40}, {3, 8, 17}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        check(shapes[s][0], shapes[s][1], shapes[s][2]);
    }
    printf(failed ? "FAILED\n" : "ok\n");
    return failed;
}

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
                      const double *, int64_t, int64_t, double *, double *, double *);
double lg_softmax_f32(const float *, int64_t, int64_t, const int64_t *, const float *,
                      const float *, int64_t, int64_t, double *, double *, float *);
double lg_affine_f64(const double *, int64_t, int64_t, const double *, const double *, double,
                     int, double *, double *, double *);
double lg_affine_f32(const float *, int64_t, int64_t, const float *, const float *, float, int,
                     double *, double *, float *);
int64_t lg_softmax_work(int64_t, int64_t);

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
    double loss = 0.0, z[64];
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

static void check(int64_t n, int64_t d, int64_t C) {
    const int64_t lanes64 = 4, lanes32 = 8;
    double *X = malloc(n * d * sizeof *X), *W = calloc(d * 32, sizeof *W), *b = calloc(32, 8);
    float *Xf = malloc(n * d * sizeof *Xf), *Wf = calloc(d * 32, sizeof *Wf);
    float *bf = calloc(32, sizeof *bf);
    double *yr = malloc(n * sizeof *yr), *w = malloc(d * sizeof *w), *yrr = malloc(n * 8);
    float *yf = malloc(n * sizeof *yf), *wf = malloc(d * sizeof *wf);
    int64_t *y = malloc(n * sizeof *y);
    double *G = calloc(d * 32, 8), *Gr = calloc(d * 32, 8), gb[32], gbr[32], out[2], ref[2];
    double *work = malloc(lg_softmax_work(d, 32) * sizeof(double) + d * 8);
    char what[64];
    for (int64_t i = 0; i < n * d; i++) Xf[i] = (float)(X[i] = 3.0 * uniform());
    for (int64_t i = 0; i < n; i++) {
        y[i] = rand() % C;
        yrr[i] = rand() % 2;
        yf[i] = (float)(yr[i] = uniform() * 5);
    }
    for (int64_t k = 0; k < d; k++) wf[k] = (float)(w[k] = uniform());
    for (int pass = 0; pass < 2; pass++) { /* float64, then float32 */
        int64_t lanes = pass == 0 ? lanes64 : lanes32, cp = (C + lanes - 1) / lanes * lanes;
        const double tol = pass == 0 ? 1e-12 : 2e-5;
        double Wd[2048], bd[32];
        for (int64_t i = 0; i < d * cp; i++) Wd[i] = 0;
        for (int64_t k = 0; k < d; k++)
            for (int64_t c = 0; c < C; c++) Wd[k * cp + c] = uniform();
        for (int64_t c = 0; c < cp; c++) bd[c] = c < C ? uniform() : 0;
        for (int64_t i = 0; i < d * cp; i++) Wf[i] = (float)Wd[i];
        for (int64_t c = 0; c < cp; c++) bf[c] = (float)bd[c];
        /* the reference gets the float32-rounded data in the float32 pass */
        double *Xr = malloc(n * d * 8), Wr[2048];
        for (int64_t i = 0; i < n * d; i++) Xr[i] = pass == 0 ? X[i] : (double)Xf[i];
        for (int64_t k = 0; k < d; k++)
            for (int64_t c = 0; c < C; c++)
                Wr[k * C + c] = pass == 0 ? Wd[k * cp + c] : (double)Wf[k * cp + c];
        for (int64_t i = 0; i < d * 32; i++) G[i] = Gr[i] = 0;
        for (int64_t c = 0; c < 32; c++) gb[c] = gbr[c] = 0;
        out[0] = pass == 0 ? lg_softmax_f64(X, n, d, y, Wd, bd, C, cp, G, gb, work)
                           : lg_softmax_f32(Xf, n, d, y, Wf, bf, C, cp, G, gb, (float *)work);
        ref[0] = softmax_ref(Xr, n, d, y, Wr, bd, C, Gr, gbr);
        double Gc[2048];
        for (int64_t k = 0; k < d; k++)
            for (int64_t c = 0; c < C; c++) Gc[k * C + c] = G[k * cp + c];
        snprintf(what, sizeof what, "softmax f%d n=%ld d=%ld C=%ld", pass ? 32 : 64, (long)n,
                 (long)d, (long)C);
        compare(what, out, ref, 1, tol);
        compare("  gradient W", Gc, Gr, d * C, tol);
        compare("  gradient b", gb, gbr, C, tol);
        for (int logistic = 0; logistic < 2; logistic++) {
            double g[256] = {0}, gr[256] = {0}, gbs = 0, gbsr = 0, wr[256];
            const double *t = logistic ? yrr : yr;
            float tf[4096];
            for (int64_t i = 0; i < n; i++) tf[i] = (float)t[i];
            for (int64_t k = 0; k < d; k++) wr[k] = pass == 0 ? w[k] : (double)wf[k];
            double tr[4096];
            for (int64_t i = 0; i < n; i++) tr[i] = pass == 0 ? t[i] : (double)tf[i];
            out[0] = pass == 0 ? lg_affine_f64(X, n, d, t, w, 0.25, logistic, g, &gbs, work)
                               : lg_affine_f32(Xf, n, d, tf, wf, 0.25f, logistic, g, &gbs,
                                               (float *)work);
            ref[0] = affine_ref(Xr, n, d, tr, wr, 0.25, logistic, gr, &gbsr);
            snprintf(what, sizeof what, "%s f%d n=%ld d=%ld", logistic ? "logistic" : "linear",
                     pass ? 32 : 64, (long)n, (long)d);
            compare(what, out, ref, 1, tol);
            compare("  gradient w", g, gr, d, tol);
            compare("  gradient b", &gbs, &gbsr, 1, tol);
        }
        free(Xr);
    }
    free(X), free(W), free(b), free(Xf), free(Wf), free(bf), free(yr), free(w), free(yrr);
    free(yf), free(wf), free(y), free(G), free(Gr), free(work);
}

int main(void) {
    srand(7);
    const int64_t shapes[][3] = {{1, 3, 2}, {5, 7, 3}, {1003, 7, 10}, {2000, 37, 16}, {4096, 64, 5}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        check(shapes[s][0], shapes[s][1], shapes[s][2]);
    }
    printf(failed ? "FAILED\n" : "ok\n");
    return failed;
}

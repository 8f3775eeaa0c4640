/* C kernels for the memory- and overhead-bound parts of a CLSR training step on a CPU (clsr/fast/native.py
   builds and loads them, each behind a checked Python wrapper; the torch ops they replace are the fallback
   and the tests' reference). Which groups of kernels are here, and the measurement that keeps them: the
   docstring of clsr/fast/native.py.

   Every kernel is written once over the element type `real`. native.py compiles this file twice, with
   -DREAL_F32 (real = float, names ending in _f32) and -DREAL_F64 (real = double, _f64), and links the two
   objects into one library. Arrays are row-major; where a kernel takes a leading dimension (ld, in
   elements) the rows may be strided, otherwise they are contiguous. */
#include <math.h>

#if defined(REAL_F32)
typedef float real;
#define NAME(f) f##_f32
#define EXP expf
#define TANH tanhf
#elif defined(REAL_F64)
typedef double real;
#define NAME(f) f##_f64
#define EXP exp
#define TANH tanh
#else
#error "compile with -DREAL_F32 or -DREAL_F64 (clsr/fast/native.py does)"
#endif

/* glibc's libmvec has SIMD variants of these; declaring them lets gcc vectorise the loops below
   (math.h declares them so only under -ffast-math, which we do not use). */
#pragma omp declare simd notinbranch
float expf(float);
#pragma omp declare simd notinbranch
float tanhf(float);
#pragma omp declare simd notinbranch
double exp(double);
#pragma omp declare simd notinbranch
double tanh(double);

/* ---------------------------------------------------------------------------------------------------
   Element-wise parts of one time step of the packed GRU / LSTM recurrences (clsr/fast/recurrence.py).

   Why C: on a CPU, a step of a small RNN (k <= 500 rows, H = 40 or 80) is a GEMM plus 5-20 element-wise
   torch ops of ~20 us each, mostly dispatch and strided-view overhead; here each step's element-wise work
   is one call. The GEMMs stay in torch (MKL / oneDNN); the torch-op loops in recurrence.py compute the
   same values and are the fallback. Every array is (k rows) x (a multiple of H), with a leading
   dimension. Names follow recurrence.py: sigma = logistic, r/z = GRU reset/update gates, c = candidate
   (GRU) or cell (LSTM). */

static inline real sigm(real x) { return (real)1 / ((real)1 + EXP(-x)); }

/* GRU forward, first half: rz <- sigma(rz + x + b) (k x 2H: h_prev W_g in, gates out; x + b = the input
   part, b (2H) may be NULL); rh = r * h_prev. */
void NAME(gru_fwd_gates)(int k, int H, real *rz, int ld_rz, const real *x, int ld_x, const real *hp, int ld_hp,
                         real *rh, int ld_rh, const real *b) {
    real bv[2 * H];
    for (int j = 0; j < 2 * H; j++) bv[j] = b ? b[j] : (real)0;
    #pragma omp parallel for schedule(static) if(k * H >= 8192)
    for (int i = 0; i < k; i++) {
        real *g = rz + (long)i * ld_rz;
        const real *h = hp + (long)i * ld_hp, *xi = x + (long)i * ld_x;
        real *o = rh + (long)i * ld_rh;
        #pragma omp simd
        for (int j = 0; j < 2 * H; j++) g[j] = sigm(g[j] + xi[j] + bv[j]);
        #pragma omp simd
        for (int j = 0; j < H; j++) o[j] = g[j] * h[j];
    }
}

/* GRU forward, second half: c <- tanh(c + x + b) ((r * h_prev) W_c in, x + b = the input part, b (H) may
   be NULL), h = c + z (h_prev - c); with K (k x 3H): the backward's factors
   [h_prev r(1-r), (h_prev - c) z(1-z), (1-z)(1-c^2)]. */
void NAME(gru_fwd_state)(int k, int H, real *c, int ld_c, const real *x, int ld_x, const real *hp, int ld_hp,
                         const real *rz, int ld_rz, real *out, int ld_out, real *K, int ld_k, const real *b) {
    real bv[H];
    for (int j = 0; j < H; j++) bv[j] = b ? b[j] : (real)0;
    #pragma omp parallel for schedule(static) if(k * H >= 8192)
    for (int i = 0; i < k; i++) {
        real *cc = c + (long)i * ld_c;
        const real *h = hp + (long)i * ld_hp, *r = rz + (long)i * ld_rz, *z = r + H, *xi = x + (long)i * ld_x;
        real *o = out + (long)i * ld_out;
        #pragma omp simd
        for (int j = 0; j < H; j++) {
            real cj = TANH(cc[j] + xi[j] + bv[j]);
            cc[j] = cj;
            o[j] = cj + z[j] * (h[j] - cj);
        }
        if (K) {
            real *k0 = K + (long)i * ld_k, *k1 = k0 + H, *k2 = k0 + 2 * H;
            #pragma omp simd
            for (int j = 0; j < H; j++) {
                real cj = cc[j];
                k0[j] = h[j] * (r[j] - r[j] * r[j]);
                k1[j] = (h[j] - cj) * (z[j] - z[j] * z[j]);
                k2[j] = ((real)1 - z[j]) * ((real)1 - cj * cj);
            }
        }
    }
}

/* GRU backward, first half: dh = d_out + carry; D = [., dz~, dc~] with dz~ = dh K1, dc~ = dh K2. */
void NAME(gru_bwd_a)(int k, int H, const real *d_out, int ld_do, const real *carry, int ld_cr, const real *K,
                     int ld_k, real *D, int ld_d, real *dh, int ld_dh) {
    #pragma omp parallel for schedule(static) if(k * H >= 8192)
    for (int i = 0; i < k; i++) {
        const real *g = d_out + (long)i * ld_do, *cr = carry + (long)i * ld_cr, *kk = K + (long)i * ld_k;
        real *d = D + (long)i * ld_d, *e = dh + (long)i * ld_dh;
        #pragma omp simd
        for (int j = 0; j < H; j++) {
            real v = g[j] + cr[j];
            e[j] = v;
            d[H + j] = v * kk[H + j];
            d[2 * H + j] = v * kk[2 * H + j];
        }
    }
}

/* GRU backward, second half, given d(r*h) = dc~ W_c^T: dr~ = d(r*h) K0 into D, and
   tmp = dh z + d(r*h) r (the carried dh_{t-1} before + [dr~, dz~] W_g^T). */
void NAME(gru_bwd_b)(int k, int H, const real *drh, int ld_drh, const real *K, int ld_k, const real *rz, int ld_rz,
                     const real *dh, int ld_dh, real *D, int ld_d, real *tmp, int ld_tmp) {
    #pragma omp parallel for schedule(static) if(k * H >= 8192)
    for (int i = 0; i < k; i++) {
        const real *a = drh + (long)i * ld_drh, *kk = K + (long)i * ld_k, *r = rz + (long)i * ld_rz;
        const real *z = r + H, *e = dh + (long)i * ld_dh;
        real *d = D + (long)i * ld_d, *t = tmp + (long)i * ld_tmp;
        #pragma omp simd
        for (int j = 0; j < H; j++) {
            d[j] = a[j] * kk[j];
            t[j] = e[j] * z[j] + a[j] * r[j];
        }
    }
}

/* LSTM forward, everything after h_prev W: g (k x 4H, blocks i, j, f, o; h_prev W in) becomes, with the
   input part x + b added (b: 4H, or 6H with time gates, may be NULL), [sigma(i~), tanh(j~), sigma(f~),
   sigma(o~)] in place; with g12 (k x 2H, the time gates' pre-activations without their bias b[4H..6H))
   s1, s2 = sigma(g12 + b), i = sigma(i~) s1, f = sigma(f~) s2 (f also written to F);
   c (k x H) holds c_{t-1} on entry and c_t on exit, h = o tanh(c_t) goes to out. With PD (k x 4H), KC,
   Q (k x 2H, time gates only): the backward's factors, see recurrence.LSTMSequence. */
void NAME(lstm_fwd)(int k, int H, real *g, int ld_g, const real *x, int ld_x, const real *g12, int ld_s, real *F,
                    int ld_f, real *c, int ld_c,
                    real *out, int ld_out, real *PD, int ld_pd, real *KC, int ld_kc, real *Q, int ld_q, const real *b) {
    int nb = g12 ? 6 * H : 4 * H;
    real bv[nb];
    for (int j = 0; j < nb; j++) bv[j] = b ? b[j] : (real)0;
    #pragma omp parallel for schedule(static) if(k * H >= 8192)
    for (int i = 0; i < k; i++) {
        real cnv[H], tcv[H], a1v[H], a2v[H];
        real *restrict gi = g + (long)i * ld_g, *restrict gj = gi + H, *restrict gf = gi + 2 * H;
        real *restrict go = gi + 3 * H;
        const real *restrict xi = x + (long)i * ld_x;
        real *restrict cc = c + (long)i * ld_c, *restrict o = out + (long)i * ld_out;
        #pragma omp simd
        for (int j = 0; j < H; j++) {
            gi[j] = sigm(gi[j] + xi[j] + bv[j]);
            gj[j] = TANH(gj[j] + xi[H + j] + bv[H + j]);
            gf[j] = sigm(gf[j] + xi[2 * H + j] + bv[2 * H + j]);
            go[j] = sigm(go[j] + xi[3 * H + j] + bv[3 * H + j]);
        }
        if (g12) {
            const real *restrict g1 = g12 + (long)i * ld_s, *restrict g2 = g1 + H;
            real *restrict ff = F + (long)i * ld_f;
            #pragma omp simd
            for (int j = 0; j < H; j++) {
                a1v[j] = sigm(g1[j] + bv[4 * H + j]); a2v[j] = sigm(g2[j] + bv[5 * H + j]);
                ff[j] = gf[j] * a2v[j];
            }
        } else {
            #pragma omp simd
            for (int j = 0; j < H; j++) { a1v[j] = (real)1; a2v[j] = (real)1; }
        }
        #pragma omp simd
        for (int j = 0; j < H; j++) {
            cnv[j] = gf[j] * a2v[j] * cc[j] + gi[j] * a1v[j] * gj[j];
            tcv[j] = TANH(cnv[j]);
            o[j] = go[j] * tcv[j];
        }
        if (PD) {
            real *restrict pd = PD + (long)i * ld_pd, *restrict kc = KC + (long)i * ld_kc;
            #pragma omp simd
            for (int j = 0; j < H; j++) {
                real si = gi[j], jj = gj[j], sf = gf[j], so = go[j], cp = cc[j], tc = tcv[j];
                pd[j] = jj * a1v[j] * (si - si * si);
                pd[H + j] = si * a1v[j] * ((real)1 - jj * jj);
                pd[2 * H + j] = cp * a2v[j] * (sf - sf * sf);
                pd[3 * H + j] = tc * (so - so * so);
                kc[j] = so * ((real)1 - tc * tc);
            }
            if (Q) {
                real *restrict q = Q + (long)i * ld_q;
                #pragma omp simd
                for (int j = 0; j < H; j++) {
                    q[j] = gj[j] * gi[j] * (a1v[j] - a1v[j] * a1v[j]);
                    q[H + j] = cc[j] * gf[j] * (a2v[j] - a2v[j] * a2v[j]);
                }
            }
        }
        #pragma omp simd
        for (int j = 0; j < H; j++) cc[j] = cnv[j];
    }
}

/* LSTM backward, everything before the carried dh_{t-1} = DG W^T: dh = d_out + dh_carry,
   dc = dc_carry + dh KC, DG = [dc, dc, dc, dh] * PD, dc_carry <- dc f; with Q (time gates) also the
   time gates' pre-activation gradients DS = [dc, dc] * Q. */
void NAME(lstm_bwd)(int k, int H, const real *d_out, int ld_do, const real *dh_carry, int ld_dh, real *dc_carry,
                    int ld_dc, const real *KC, int ld_kc, const real *PD, int ld_pd, const real *F, int ld_f,
                    real *DG, int ld_dg, const real *Q, int ld_q, real *DS, int ld_ds) {
    #pragma omp parallel for schedule(static) if(k * H >= 8192)
    for (int i = 0; i < k; i++) {
        const real *g = d_out + (long)i * ld_do, *hc = dh_carry + (long)i * ld_dh, *kc = KC + (long)i * ld_kc;
        const real *pd = PD + (long)i * ld_pd, *f = F + (long)i * ld_f;
        real *cc = dc_carry + (long)i * ld_dc, *dg = DG + (long)i * ld_dg;
        const real *q = Q ? Q + (long)i * ld_q : 0;
        real *ds = Q ? DS + (long)i * ld_ds : 0;
        #pragma omp simd
        for (int j = 0; j < H; j++) {
            real dh = g[j] + hc[j];
            real dc = cc[j] + dh * kc[j];
            if (q) { ds[j] = dc * q[j]; ds[H + j] = dc * q[H + j]; }
            dg[j] = dc * pd[j];
            dg[H + j] = dc * pd[H + j];
            dg[2 * H + j] = dc * pd[2 * H + j];
            dg[3 * H + j] = dh * pd[3 * H + j];
            cc[j] = dc * f[j];
        }
    }
}

/* ---------------------------------------------------------------------------------------------------
   Batch norm in training mode fused with the ReLU after it (clsr/fast/mlp.py, clsr/fast/attention.py).

   Shared by the batch-norm kernels below. From the summed statistics of n rows (shifted by `shift`):
   mean, 1/sqrt(var + eps), the biased var, and BN's affine map y = x a + b. */
static void bn_affine(int C, const double *sum, const double *sq, double n, const real *shift,
                      const real *gamma, const real *beta, double eps, real *mean_out, real *invstd_out,
                      real *var_out, real *a, real *b) {
    for (int j = 0; j < C; j++) {
        double m = sum[j] / n, var = sq[j] / n - m * m;
        if (var < 0) var = 0;
        double mean = m + (double)shift[j], inv = 1.0 / sqrt(var + eps);
        mean_out[j] = (real)mean; invstd_out[j] = (real)inv; var_out[j] = (real)var;
        a[j] = (real)inv * gamma[j];
        b[j] = beta[j] - (real)mean * a[j];
    }
}

/* The backward's per-column factors from the saved statistics: a = gamma invstd and b = beta - mean a
   (the forward's affine map, to recompute the ReLU mask), mi = mean invstd (xhat = x invstd - mi). */
static void bn_bwd_factors(int C, const real *mean, const real *invstd, const real *gamma, const real *beta,
                           real *a, real *b, real *mi) {
    for (int j = 0; j < C; j++) {
        a[j] = invstd[j] * gamma[j]; b[j] = beta[j] - mean[j] * a[j]; mi[j] = mean[j] * invstd[j];
    }
}

/* From the summed g and g xhat over n rows: dbeta, dgamma and the write pass's k1 = a sum(g) / n,
   k2 = a sum(g xhat) / n. */
static void bn_bwd_sums(int C, const double *sg, const double *sgx, double n, const real *a, real *dgamma,
                        real *dbeta, real *k1, real *k2) {
    for (int j = 0; j < C; j++) {
        dgamma[j] = (real)sgx[j]; dbeta[j] = (real)sg[j];
        k1[j] = (real)(sg[j] / n) * a[j];
        k2[j] = (real)(sgx[j] / n) * a[j];
    }
}

/* Batch norm (training mode: batch statistics) followed by ReLU, on an (N x C) matrix, and its backward.

   Why: with autograd, BN forward, ReLU, ReLU backward and BN backward are separate passes over the
   largest tensors of a CLSR step (125k x 80 in the short-term attention), and that step is bound by
   memory bandwidth. Fused: forward = one statistics pass + one normalise-and-clip pass; backward = one
   reduction pass + one write pass, the ReLU mask recomputed from x instead of read from y.
   Statistics are accumulated in double, on data shifted by the first row (so E[x^2] - E[x]^2 does not
   cancel), per thread of torch's own OpenMP pool, then summed.

   The rows may carry the DIN first layer's structure (layers.din_first_layer): N = B * Q * L rows
   ordered (b, q, t) and x[b,q,t] = z[b,q,t] + K[b,t] + R[b,q], the two broadcast terms added on the fly
   (never written) and their gradients dK[b,t] = sum_q dx[b,q,t], dR[b,q] = sum_t dx[b,q,t] formed in the
   backward's write pass. A plain matrix is B = N, Q = L = 1 with K = R = NULL.

   y = max(0, (x - mean) * invstd * gamma + beta),  invstd = 1 / sqrt(var + eps),  var biased.
   Backward with g = dy * [pre > 0], xhat = (x - mean) * invstd:
       dbeta = sum g,  dgamma = sum g xhat,  dx = gamma invstd (g - dbeta / N - xhat dgamma / N). */

/* Forward: y = relu(BN(x)) over the B * Q * L rows (K, R: (B, L, C), (B, Q, C) or NULL), and the batch's
   mean, invstd and biased var (C each). z, y contiguous (N x C). */
void NAME(bn_relu_fwd)(long B, int Q, int L, int C, const real *z, const real *K, const real *R, const real *gamma,
                       const real *beta, double eps, real *y, real *mean_out, real *invstd_out, real *var_out) {
    long N = B * Q * L;
    real zero[C], shift[C];
    for (int j = 0; j < C; j++) {
        zero[j] = 0;
        shift[j] = z[j] + (K ? K[j] : 0) + (R ? R[j] : 0);
    }
    double sum[C], sq[C];
    for (int j = 0; j < C; j++) { sum[j] = 0; sq[j] = 0; }
    #pragma omp parallel
    {
        double ls[C], lq[C];
        for (int j = 0; j < C; j++) { ls[j] = 0; lq[j] = 0; }
        #pragma omp for schedule(static)
        for (long b = 0; b < B; b++)
            for (int q = 0; q < Q; q++)
                for (int t = 0; t < L; t++) {
                    const real *row = z + (((long)b * Q + q) * L + t) * C;
                    const real *kr = K ? K + ((long)b * L + t) * C : zero, *rr = R ? R + ((long)b * Q + q) * C : zero;
                    #pragma omp simd
                    for (int j = 0; j < C; j++) {
                        double v = (double)(row[j] + kr[j] + rr[j]) - (double)shift[j];
                        ls[j] += v; lq[j] += v * v;
                    }
                }
        #pragma omp critical
        for (int j = 0; j < C; j++) { sum[j] += ls[j]; sq[j] += lq[j]; }
    }
    real a[C], bb[C];
    bn_affine(C, sum, sq, (double)N, shift, gamma, beta, eps, mean_out, invstd_out, var_out, a, bb);
    #pragma omp parallel for schedule(static)
    for (long b = 0; b < B; b++)
        for (int q = 0; q < Q; q++)
            for (int t = 0; t < L; t++) {
                long i = ((long)b * Q + q) * L + t;
                const real *row = z + i * C;
                real *out = y + i * C;
                const real *kr = K ? K + ((long)b * L + t) * C : zero, *rr = R ? R + ((long)b * Q + q) * C : zero;
                #pragma omp simd
                for (int j = 0; j < C; j++) {
                    real v = (row[j] + kr[j] + rr[j]) * a[j] + bb[j];
                    out[j] = v > 0 ? v : (real)0;
                }
            }
}

/* Backward: dz (N x C), dK, dR (the broadcast terms' gradients, where K, R are given), dgamma, dbeta from
   dy and the forward's inputs and statistics (the ReLU mask recomputed). */
void NAME(bn_relu_bwd)(long B, int Q, int L, int C, const real *dy, const real *z, const real *K, const real *R,
                       const real *mean, const real *invstd, const real *gamma, const real *beta, real *dz, real *dK,
                       real *dR, real *dgamma, real *dbeta) {
    long N = B * Q * L;
    real zero[C], a[C], bb[C], mi[C];
    for (int j = 0; j < C; j++) zero[j] = 0;
    bn_bwd_factors(C, mean, invstd, gamma, beta, a, bb, mi);
    double sg[C], sgx[C];
    for (int j = 0; j < C; j++) { sg[j] = 0; sgx[j] = 0; }
    #pragma omp parallel
    {
        double lg[C], lgx[C];
        real fg[C], fgx[C];
        for (int j = 0; j < C; j++) { lg[j] = 0; lgx[j] = 0; fg[j] = 0; fgx[j] = 0; }
        long n_in_block = 0;
        #pragma omp for schedule(static)
        for (long b = 0; b < B; b++)
            for (int q = 0; q < Q; q++)
                for (int t = 0; t < L; t++) {
                    long i = ((long)b * Q + q) * L + t;
                    const real *row = z + i * C, *g = dy + i * C;
                    const real *kr = K ? K + ((long)b * L + t) * C : zero, *rr = R ? R + ((long)b * Q + q) * C : zero;
                    #pragma omp simd
                    for (int j = 0; j < C; j++) {
                        real x = row[j] + kr[j] + rr[j];
                        real gm = (x * a[j] + bb[j]) > 0 ? g[j] : (real)0;
                        fg[j] += gm;
                        fgx[j] += gm * (x * invstd[j] - mi[j]);
                    }
                    if (++n_in_block == 64) { /* flush the short float sums into double */
                        for (int j = 0; j < C; j++) { lg[j] += fg[j]; lgx[j] += fgx[j]; fg[j] = 0; fgx[j] = 0; }
                        n_in_block = 0;
                    }
                }
        #pragma omp critical
        for (int j = 0; j < C; j++) { sg[j] += lg[j] + fg[j]; sgx[j] += lgx[j] + fgx[j]; }
    }
    real k1[C], k2[C];
    bn_bwd_sums(C, sg, sgx, (double)N, a, dgamma, dbeta, k1, k2);
    /* parallel over b: each instance's dK, dR rows are written by one thread only */
    #pragma omp parallel for schedule(static)
    for (long b = 0; b < B; b++) {
        if (dK) for (long i = 0; i < (long)L * C; i++) dK[(long)b * L * C + i] = 0;
        for (int q = 0; q < Q; q++) {
            real *dr = dR ? dR + ((long)b * Q + q) * C : 0;
            if (dr) for (int j = 0; j < C; j++) dr[j] = 0;
            for (int t = 0; t < L; t++) {
                long i = ((long)b * Q + q) * L + t;
                const real *row = z + i * C, *g = dy + i * C;
                real *out = dz + i * C;
                const real *kr = K ? K + ((long)b * L + t) * C : zero, *rr = R ? R + ((long)b * Q + q) * C : zero;
                #pragma omp simd
                for (int j = 0; j < C; j++) {
                    real x = row[j] + kr[j] + rr[j];
                    real gm = (x * a[j] + bb[j]) > 0 ? g[j] : (real)0;
                    out[j] = a[j] * gm - k1[j] - (x * invstd[j] - mi[j]) * k2[j];
                }
                if (dK) {
                    real *dk = dK + ((long)b * L + t) * C;
                    #pragma omp simd
                    for (int j = 0; j < C; j++) dk[j] += out[j];
                }
                if (dr) {
                    #pragma omp simd
                    for (int j = 0; j < C; j++) dr[j] += out[j];
                }
            }
        }
    }
}

/* The last hidden layer of a scorer MLP with its output unit: s = relu(BN(x)) . w + b0 (one score per row),
   without writing relu(BN(x)) at all; the backward recomputes it from x. Same statistics as bn_relu_fwd;
   optional row weights wt (the ragged DIN rows' multiplicities, n_eff = their sum; NULL: 1 and N), with
   ds and dx then totals over each row's copies.
   Backward with ds (N): g = ds_i w_j [pre > 0]; dbeta = sum g, dgamma = sum g xhat, dw = sum ds_i y_ij,
   dx = gamma invstd (g - dbeta / N - xhat dgamma / N). */

/* Forward: s (N) and the batch's mean, invstd, biased var (C each) of x (N x C, leading dimension ld_x). */
void NAME(bn_relu_dot_fwd)(long N, int C, const real *x, long ld_x, const real *gamma, const real *beta,
                           double eps, const real *w, double b0, real *s, real *mean_out, real *invstd_out,
                           real *var_out, const real *wt, double n_eff) {
    double sum[C], sq[C];
    const real *shift = x;
    for (int j = 0; j < C; j++) { sum[j] = 0; sq[j] = 0; }
    #pragma omp parallel
    {
        double ls[C], lq[C];
        for (int j = 0; j < C; j++) { ls[j] = 0; lq[j] = 0; }
        #pragma omp for schedule(static)
        for (long i = 0; i < N; i++) {
            const real *row = x + i * ld_x;
            double wi = wt ? (double)wt[i] : 1.0;
            #pragma omp simd
            for (int j = 0; j < C; j++) {
                double v = (double)row[j] - (double)shift[j];
                ls[j] += wi * v; lq[j] += wi * v * v;
            }
        }
        #pragma omp critical
        for (int j = 0; j < C; j++) { sum[j] += ls[j]; sq[j] += lq[j]; }
    }
    real a[C], b[C];
    bn_affine(C, sum, sq, n_eff, shift, gamma, beta, eps, mean_out, invstd_out, var_out, a, b);
    #pragma omp parallel for schedule(static)
    for (long i = 0; i < N; i++) {
        const real *row = x + i * ld_x;
        real acc = 0;
        #pragma omp simd reduction(+:acc)
        for (int j = 0; j < C; j++) { real v = row[j] * a[j] + b[j]; acc += (v > 0 ? v : (real)0) * w[j]; }
        s[i] = acc + (real)b0;
    }
}

/* Backward of bn_relu_dot_fwd: dx (N x C, leading dimension ld_dx), dgamma, dbeta and the output unit's
   dw (C) from ds (N). */
void NAME(bn_relu_dot_bwd)(long N, int C, const real *ds, const real *x, long ld_x, const real *mean,
                           const real *invstd, const real *gamma, const real *beta, const real *w, real *dx, long ld_dx,
                           real *dgamma, real *dbeta, real *dw, const real *wt, double n_eff) {
    real a[C], b[C], mi[C];
    bn_bwd_factors(C, mean, invstd, gamma, beta, a, b, mi);
    double sg[C], sgx[C], sw[C];
    for (int j = 0; j < C; j++) { sg[j] = 0; sgx[j] = 0; sw[j] = 0; }
    #pragma omp parallel
    {
        double lg[C], lgx[C], lw[C];
        real bg[C], bgx[C], bw[C];
        for (int j = 0; j < C; j++) { lg[j] = 0; lgx[j] = 0; lw[j] = 0; bg[j] = 0; bgx[j] = 0; bw[j] = 0; }
        long n_in_block = 0;
        #pragma omp for schedule(static)
        for (long i = 0; i < N; i++) {
            const real *row = x + i * ld_x;
            real d = ds[i];
            #pragma omp simd
            for (int j = 0; j < C; j++) {
                real pre = row[j] * a[j] + b[j];
                real gm = pre > 0 ? d * w[j] : (real)0;
                bg[j] += gm;
                bgx[j] += gm * (row[j] * invstd[j] - mi[j]);
                bw[j] += pre > 0 ? d * pre : (real)0;
            }
            if (++n_in_block == 64) { /* flush the short float sums into double */
                for (int j = 0; j < C; j++) {
                    lg[j] += bg[j]; lgx[j] += bgx[j]; lw[j] += bw[j]; bg[j] = 0; bgx[j] = 0; bw[j] = 0;
                }
                n_in_block = 0;
            }
        }
        #pragma omp critical
        for (int j = 0; j < C; j++) { sg[j] += lg[j] + bg[j]; sgx[j] += lgx[j] + bgx[j]; sw[j] += lw[j] + bw[j]; }
    }
    real k1[C], k2[C];
    bn_bwd_sums(C, sg, sgx, n_eff, a, dgamma, dbeta, k1, k2);
    for (int j = 0; j < C; j++) dw[j] = (real)sw[j];
    #pragma omp parallel for schedule(static)
    for (long i = 0; i < N; i++) {
        const real *row = x + i * ld_x;
        real *out = dx + i * ld_dx;
        real d = ds[i], wi = wt ? wt[i] : (real)1;
        #pragma omp simd
        for (int j = 0; j < C; j++) {
            real gm = (row[j] * a[j] + b[j]) > 0 ? d * w[j] : (real)0;
            out[j] = a[j] * gm - wi * (k1[j] + (row[j] * invstd[j] - mi[j]) * k2[j]);
        }
    }
}

/* ---------------------------------------------------------------------------------------------------
   The DIN scorer's first layer in training (clsr/fast/attention.py: din_fused, din_ragged). */

/* The per-(instance, candidate, position) part of a DIN scorer's first layer (layers.din_first_layer):
   z[b,c,t] += K[b,t] + Q[b,c] in one pass, and the reductions of its backward in one pass each:
   dK[b,t] = sum_c dz[b,c,t], dQ[b,c] = sum_t dz[b,c,t]; for prod[b,c,t] = a[b,t] * r[b,c]:
   da[b,t] = sum_c dprod[b,c,t] * r[b,c], dr[b,c] = sum_t dprod[b,c,t] * a[b,t].
   z, dz, dprod are contiguous (B, C, L, h); K, dK (B, L, h); Q, dQ (B, C, h); a (B, L, d) and r (B, C, d)
   are given by row pointers with strides (sa_b, sa_t), (sr_b, sr_c); da, dr are contiguous. */

/* Forward: z[b,c,t] += K[b,t] + Q[b,c]. */
void NAME(din_add_kq)(long B, int C, int L, int h, real *z, const real *K, const real *Q) {
    #pragma omp parallel for schedule(static)
    for (long bc = 0; bc < B * C; bc++) {
        long b = bc / C;
        const real *q = Q + bc * h;
        for (int t = 0; t < L; t++) {
            real *zz = z + (bc * L + t) * h;
            const real *k = K + (b * L + t) * h;
            #pragma omp simd
            for (int j = 0; j < h; j++) zz[j] += k[j] + q[j];
        }
    }
}

/* Backward of din_add_kq: dK[b,t] = sum_c dz[b,c,t], dQ[b,c] = sum_t dz[b,c,t]. */
void NAME(din_sum_kq)(long B, int C, int L, int h, const real *dz, real *dK, real *dQ) {
    #pragma omp parallel for schedule(static)
    for (long b = 0; b < B; b++) {
        real *dk = dK + b * L * h;
        for (long i = 0; i < (long)L * h; i++) dk[i] = 0;
        for (int c = 0; c < C; c++) {
            real *dq = dQ + (b * C + c) * h;
            for (int j = 0; j < h; j++) dq[j] = 0;
            for (int t = 0; t < L; t++) {
                const real *g = dz + ((b * C + c) * L + t) * h;
                real *k = dk + (long)t * h;
                #pragma omp simd
                for (int j = 0; j < h; j++) { k[j] += g[j]; dq[j] += g[j]; }
            }
        }
    }
}

/* Backward of prod[b,c,t] = a[b,t] * r[b,c]: da[b,t] = sum_c dprod[b,c,t] r[b,c],
   dr[b,c] = sum_t dprod[b,c,t] a[b,t]. */
void NAME(din_prod_bwd)(long B, int C, int L, int d, const real *dprod, const real *a, long sa_b, long sa_t,
                        const real *r, long sr_b, long sr_c, real *da, real *dr) {
    #pragma omp parallel for schedule(static)
    for (long b = 0; b < B; b++) {
        real *dab = da + b * L * d;
        for (long i = 0; i < (long)L * d; i++) dab[i] = 0;
        for (int c = 0; c < C; c++) {
            const real *rc = r + b * sr_b + c * sr_c;
            real *drc = dr + (b * C + c) * d;
            for (int j = 0; j < d; j++) drc[j] = 0;
            for (int t = 0; t < L; t++) {
                const real *g = dprod + ((b * C + c) * L + t) * d, *at = a + b * sa_b + t * sa_t;
                real *dat = dab + (long)t * d;
                #pragma omp simd
                for (int j = 0; j < d; j++) { dat[j] += g[j] * rc[j]; drc[j] += g[j] * at[j]; }
            }
        }
    }
}

/* Ragged rows of a DIN scorer (training): instance b has n_b valid positions (left-aligned, n_b <= L);
   its valid rows (q, t < n_b) come in the order (b, q, t), starting at off[b] = Q * sum_{b' < b} n_b',
   V rows in all; then one row per (b, q), V + b * Q + q, standing for the L - n_b padded positions, whose
   keys are all equal (zero, or the padding item's), so their rows are equal too: it enters the batch
   statistics with weight L - n_b, and its gradient is the total over those positions (shared out
   equally among the padded keys). Exact, and 1 - V / (B Q L) of the rows are never computed (about 22 %
   on ml100k). The padding row's key is a[b, min(n_b, L - 1)]. Lengths n and offsets off: (B,) int64. */

/* Forward: prod[row] = a[b, t] * r[b, q] over the ragged rows (V + B * Q, d), contiguous. */
void NAME(ragged_prod_fwd)(long B, int Q, int L, int d, const long *n, const long *off, long V,
                           const real *a, long sa_b, long sa_t, const real *r, long sr_b, long sr_q, real *prod) {
    #pragma omp parallel for schedule(static)
    for (long b = 0; b < B; b++) {
        long nb = n[b], tpad = nb < L ? nb : L - 1;
        for (int q = 0; q < Q; q++) {
            const real *rq = r + b * sr_b + q * sr_q;
            for (long t = 0; t < nb; t++) {
                const real *at = a + b * sa_b + t * sa_t;
                real *p = prod + (off[b] + q * nb + t) * d;
                #pragma omp simd
                for (int j = 0; j < d; j++) p[j] = at[j] * rq[j];
            }
            const real *ap = a + b * sa_b + tpad * sa_t;
            real *p = prod + (V + b * Q + q) * d;
            #pragma omp simd
            for (int j = 0; j < d; j++) p[j] = ap[j] * rq[j];
        }
    }
}

/* Backward of ragged_prod_fwd: da (B, L, d) and dr (B, Q, d), contiguous; a padding row's gradient for
   its key is shared out equally among the L - n_b padded positions. */
void NAME(ragged_prod_bwd)(long B, int Q, int L, int d, const long *n, const long *off, long V,
                           const real *dprod, const real *a, long sa_b, long sa_t, const real *r, long sr_b,
                           long sr_q, real *da, real *dr) {
    #pragma omp parallel for schedule(static)
    for (long b = 0; b < B; b++) {
        long nb = n[b], wpad = L - nb, tpad = nb < L ? nb : L - 1;
        real *dab = da + b * L * d, pad[d];
        for (long i = 0; i < (long)L * d; i++) dab[i] = 0;
        for (int j = 0; j < d; j++) pad[j] = 0;
        const real *ap = a + b * sa_b + tpad * sa_t;
        for (int q = 0; q < Q; q++) {
            const real *rq = r + b * sr_b + q * sr_q;
            real *drq = dr + (b * Q + q) * d;
            for (int j = 0; j < d; j++) drq[j] = 0;
            for (long t = 0; t < nb; t++) {
                const real *g = dprod + (off[b] + q * nb + t) * d, *at = a + b * sa_b + t * sa_t;
                real *dat = dab + t * d;
                #pragma omp simd
                for (int j = 0; j < d; j++) { dat[j] += g[j] * rq[j]; drq[j] += g[j] * at[j]; }
            }
            const real *g = dprod + (V + b * Q + q) * d;
            #pragma omp simd
            for (int j = 0; j < d; j++) { pad[j] += g[j] * rq[j]; drq[j] += g[j] * ap[j]; }
        }
        for (long t = nb; t < L; t++)
            for (int j = 0; j < d; j++) dab[t * d + j] = pad[j] / (real)wpad;
    }
}

/* relu(BN(x)) over ragged rows, x = z + K[b, t] + R[b, q] (t = the padding key's position for the
   padding rows), weights 1 and L - n_b in the statistics; y has the rows of z. */
void NAME(bn_relu_ragged_fwd)(long B, int Q, int L, int C, const long *n, const long *off, long V,
                              const real *z, const real *K, const real *R, const real *gamma, const real *beta,
                              double eps, real *y, real *mean_out, real *invstd_out, real *var_out) {
    double N = (double)B * Q * L;
    real shift[C];
    for (int j = 0; j < C; j++) shift[j] = z[j] + K[j] + R[j];
    double sum[C], sq[C];
    for (int j = 0; j < C; j++) { sum[j] = 0; sq[j] = 0; }
    #pragma omp parallel
    {
        double ls[C], lq[C];
        for (int j = 0; j < C; j++) { ls[j] = 0; lq[j] = 0; }
        #pragma omp for schedule(static)
        for (long b = 0; b < B; b++) {
            long nb = n[b], wpad = L - nb, tpad = nb < L ? nb : L - 1;
            for (int q = 0; q < Q; q++) {
                const real *rr = R + (b * Q + q) * C;
                for (long t = 0; t < nb; t++) {
                    const real *row = z + (off[b] + q * nb + t) * C, *kr = K + (b * L + t) * C;
                    #pragma omp simd
                    for (int j = 0; j < C; j++) {
                        double v = (double)(row[j] + kr[j] + rr[j]) - (double)shift[j];
                        ls[j] += v; lq[j] += v * v;
                    }
                }
                if (wpad > 0) {
                    const real *row = z + (V + b * Q + q) * C, *kr = K + (b * L + tpad) * C;
                    double w = (double)wpad;
                    for (int j = 0; j < C; j++) {
                        double v = (double)(row[j] + kr[j] + rr[j]) - (double)shift[j];
                        ls[j] += w * v; lq[j] += w * v * v;
                    }
                }
            }
        }
        #pragma omp critical
        for (int j = 0; j < C; j++) { sum[j] += ls[j]; sq[j] += lq[j]; }
    }
    real a_[C], bb[C];
    bn_affine(C, sum, sq, N, shift, gamma, beta, eps, mean_out, invstd_out, var_out, a_, bb);
    #pragma omp parallel for schedule(static)
    for (long b = 0; b < B; b++) {
        long nb = n[b], tpad = nb < L ? nb : L - 1;
        for (int q = 0; q < Q; q++) {
            const real *rr = R + (b * Q + q) * C;
            for (long t = 0; t <= nb; t++) { /* t == nb: the padding row */
                long i = t < nb ? off[b] + q * nb + t : V + b * Q + q;
                const real *row = z + i * C, *kr = K + (b * L + (t < nb ? t : tpad)) * C;
                real *out = y + i * C;
                #pragma omp simd
                for (int j = 0; j < C; j++) {
                    real v = (row[j] + kr[j] + rr[j]) * a_[j] + bb[j];
                    out[j] = v > 0 ? v : (real)0;
                }
            }
        }
    }
}

/* Backward of bn_relu_ragged_fwd: dz (the rows of z; a padding row's is the total over its positions),
   dK (B, L, C; each padded position gets an equal share), dR (B, Q, C), dgamma, dbeta. */
void NAME(bn_relu_ragged_bwd)(long B, int Q, int L, int C, const long *n, const long *off, long V,
                              const real *dy, const real *z, const real *K, const real *R, const real *mean,
                              const real *invstd, const real *gamma, const real *beta, real *dz, real *dK, real *dR,
                              real *dgamma, real *dbeta) {
    double N = (double)B * Q * L;
    real a_[C], bb[C], mi[C];
    bn_bwd_factors(C, mean, invstd, gamma, beta, a_, bb, mi);
    double sg[C], sgx[C];
    for (int j = 0; j < C; j++) { sg[j] = 0; sgx[j] = 0; }
    #pragma omp parallel
    {
        double lg[C], lgx[C];
        for (int j = 0; j < C; j++) { lg[j] = 0; lgx[j] = 0; }
        #pragma omp for schedule(static)
        for (long b = 0; b < B; b++) {
            long nb = n[b], wpad = L - nb, tpad = nb < L ? nb : L - 1;
            real fg[C], fgx[C];
            for (int j = 0; j < C; j++) { fg[j] = 0; fgx[j] = 0; }
            for (int q = 0; q < Q; q++) {
                const real *rr = R + (b * Q + q) * C;
                for (long t = 0; t <= nb; t++) {
                    if (t == nb && wpad == 0) break;
                    long i = t < nb ? off[b] + q * nb + t : V + b * Q + q;
                    const real *row = z + i * C, *g = dy + i * C, *kr = K + (b * L + (t < nb ? t : tpad)) * C;
                    #pragma omp simd
                    for (int j = 0; j < C; j++) {
                        real x = row[j] + kr[j] + rr[j];
                        real gm = (x * a_[j] + bb[j]) > 0 ? g[j] : (real)0;
                        fg[j] += gm;
                        fgx[j] += gm * (x * invstd[j] - mi[j]);
                    }
                }
            }
            for (int j = 0; j < C; j++) { lg[j] += fg[j]; lgx[j] += fgx[j]; }
        }
        #pragma omp critical
        for (int j = 0; j < C; j++) { sg[j] += lg[j]; sgx[j] += lgx[j]; }
    }
    real k1[C], k2[C];
    bn_bwd_sums(C, sg, sgx, N, a_, dgamma, dbeta, k1, k2);
    #pragma omp parallel for schedule(static)
    for (long b = 0; b < B; b++) {
        long nb = n[b], wpad = L - nb, tpad = nb < L ? nb : L - 1;
        real *dkb = dK + b * L * C, pad[C];
        for (long i = 0; i < (long)L * C; i++) dkb[i] = 0;
        for (int j = 0; j < C; j++) pad[j] = 0;
        for (int q = 0; q < Q; q++) {
            const real *rr = R + (b * Q + q) * C;
            real *dr = dR + (b * Q + q) * C;
            for (int j = 0; j < C; j++) dr[j] = 0;
            for (long t = 0; t <= nb; t++) {
                int is_pad = t == nb;
                long i = is_pad ? V + b * Q + q : off[b] + q * nb + t;
                const real *row = z + i * C, *g = dy + i * C, *kr = K + (b * L + (is_pad ? tpad : t)) * C;
                real *out = dz + i * C, w = is_pad ? (real)wpad : (real)1;
                #pragma omp simd
                for (int j = 0; j < C; j++) {
                    real x = row[j] + kr[j] + rr[j];
                    real gm = (x * a_[j] + bb[j]) > 0 ? g[j] : (real)0;
                    out[j] = a_[j] * gm - w * (k1[j] + (x * invstd[j] - mi[j]) * k2[j]);
                }
                if (is_pad && wpad == 0) { for (int j = 0; j < C; j++) out[j] = 0; continue; }
                real *dk = is_pad ? pad : dkb + t * C;
                #pragma omp simd
                for (int j = 0; j < C; j++) { dk[j] += out[j]; dr[j] += out[j]; }
            }
        }
        for (long t = nb; t < L; t++)
            for (int j = 0; j < C; j++) dkb[t * C + j] = pad[j] / (real)wpad;
    }
}

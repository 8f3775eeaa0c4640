/* Element-wise parts of one time step of the packed GRU / LSTM recurrences (clsr/models/recurrence.py).

   Why C: on a CPU, a step of a small RNN (k <= 500 rows, H = 40 or 80) is a GEMM plus 5-20 element-wise
   torch ops of ~20 us each, mostly dispatch and strided-view overhead; here each step's element-wise work
   is one call. The GEMMs stay in torch (MKL / oneDNN). Built and loaded by clsr/models/native.py; the
   torch-op loops in recurrence.py compute the same values and are the fallback.

   Every array is row-major with an explicit leading dimension (ld, in elements). Names follow
   recurrence.py: sigma = logistic, r/z = GRU reset/update gates, c = candidate (GRU) or cell (LSTM). */
#include <math.h>

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

#define DEFINE_KERNELS(T, SUF, EXP, TANH)                                                                  \
                                                                                                           \
static inline T sigm_##SUF(T x) { return (T)1 / ((T)1 + EXP(-x)); }                                       \
                                                                                                           \
/* GRU forward, first half: rz <- sigma(rz + x + b) (k x 2H: h_prev W_g in, gates out; x + b = the input   \
   part, b (2H) may be NULL); rh = r * h_prev. */                                                          \
void gru_fwd_gates_##SUF(int k, int H, T *rz, int ld_rz, const T *x, int ld_x, const T *hp, int ld_hp,    \
                         T *rh, int ld_rh, const T *b) {                                                   \
    T bv[2 * H];                                                                                           \
    for (int j = 0; j < 2 * H; j++) bv[j] = b ? b[j] : (T)0;                                               \
    _Pragma("omp parallel for schedule(static) if(k * H >= 8192)")                                      \
    for (int i = 0; i < k; i++) {                                                                          \
        T *g = rz + (long)i * ld_rz;                                                                       \
        const T *h = hp + (long)i * ld_hp, *xi = x + (long)i * ld_x;                                       \
        T *o = rh + (long)i * ld_rh;                                                                       \
        _Pragma("omp simd")                                                                                \
        for (int j = 0; j < 2 * H; j++) g[j] = sigm_##SUF(g[j] + xi[j] + bv[j]);                           \
        _Pragma("omp simd")                                                                                \
        for (int j = 0; j < H; j++) o[j] = g[j] * h[j];                                                    \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
/* GRU forward, second half: c <- tanh(c + x + b) ((r * h_prev) W_c in, x + b = the input part, b (H) may  \
   be NULL), h = c + z (h_prev - c); with K (k x 3H): the backward's factors                              \
   [h_prev r(1-r), (h_prev - c) z(1-z), (1-z)(1-c^2)]. */                                                  \
void gru_fwd_state_##SUF(int k, int H, T *c, int ld_c, const T *x, int ld_x, const T *hp, int ld_hp,      \
                         const T *rz, int ld_rz, T *out, int ld_out, T *K, int ld_k, const T *b) {         \
    T bv[H];                                                                                               \
    for (int j = 0; j < H; j++) bv[j] = b ? b[j] : (T)0;                                                   \
    _Pragma("omp parallel for schedule(static) if(k * H >= 8192)")                                      \
    for (int i = 0; i < k; i++) {                                                                          \
        T *cc = c + (long)i * ld_c;                                                                        \
        const T *h = hp + (long)i * ld_hp, *r = rz + (long)i * ld_rz, *z = r + H, *xi = x + (long)i * ld_x;\
        T *o = out + (long)i * ld_out;                                                                     \
        _Pragma("omp simd")                                                                                \
        for (int j = 0; j < H; j++) {                                                                      \
            T cj = TANH(cc[j] + xi[j] + bv[j]);                                                            \
            cc[j] = cj;                                                                                    \
            o[j] = cj + z[j] * (h[j] - cj);                                                                \
        }                                                                                                  \
        if (K) {                                                                                           \
            T *k0 = K + (long)i * ld_k, *k1 = k0 + H, *k2 = k0 + 2 * H;                                    \
            _Pragma("omp simd")                                                                            \
            for (int j = 0; j < H; j++) {                                                                  \
                T cj = cc[j];                                                                              \
                k0[j] = h[j] * (r[j] - r[j] * r[j]);                                                       \
                k1[j] = (h[j] - cj) * (z[j] - z[j] * z[j]);                                                \
                k2[j] = ((T)1 - z[j]) * ((T)1 - cj * cj);                                                  \
            }                                                                                              \
        }                                                                                                  \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
/* GRU backward, first half: dh = d_out + carry; D = [., dz~, dc~] with dz~ = dh K1, dc~ = dh K2. */       \
void gru_bwd_a_##SUF(int k, int H, const T *d_out, int ld_do, const T *carry, int ld_cr, const T *K,       \
                     int ld_k, T *D, int ld_d, T *dh, int ld_dh) {                                         \
    _Pragma("omp parallel for schedule(static) if(k * H >= 8192)")                                      \
    for (int i = 0; i < k; i++) {                                                                          \
        const T *g = d_out + (long)i * ld_do, *cr = carry + (long)i * ld_cr, *kk = K + (long)i * ld_k;     \
        T *d = D + (long)i * ld_d, *e = dh + (long)i * ld_dh;                                              \
        _Pragma("omp simd")                                                                                \
        for (int j = 0; j < H; j++) {                                                                      \
            T v = g[j] + cr[j];                                                                            \
            e[j] = v;                                                                                      \
            d[H + j] = v * kk[H + j];                                                                      \
            d[2 * H + j] = v * kk[2 * H + j];                                                              \
        }                                                                                                  \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
/* GRU backward, second half, given d(r*h) = dc~ W_c^T: dr~ = d(r*h) K0 into D, and                        \
   tmp = dh z + d(r*h) r (the carried dh_{t-1} before + [dr~, dz~] W_g^T). */                              \
void gru_bwd_b_##SUF(int k, int H, const T *drh, int ld_drh, const T *K, int ld_k, const T *rz, int ld_rz, \
                     const T *dh, int ld_dh, T *D, int ld_d, T *tmp, int ld_tmp) {                         \
    _Pragma("omp parallel for schedule(static) if(k * H >= 8192)")                                      \
    for (int i = 0; i < k; i++) {                                                                          \
        const T *a = drh + (long)i * ld_drh, *kk = K + (long)i * ld_k, *r = rz + (long)i * ld_rz;          \
        const T *z = r + H, *e = dh + (long)i * ld_dh;                                                     \
        T *d = D + (long)i * ld_d, *t = tmp + (long)i * ld_tmp;                                            \
        _Pragma("omp simd")                                                                                \
        for (int j = 0; j < H; j++) {                                                                      \
            d[j] = a[j] * kk[j];                                                                           \
            t[j] = e[j] * z[j] + a[j] * r[j];                                                              \
        }                                                                                                  \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
/* LSTM forward, everything after h_prev W: g (k x 4H, blocks i, j, f, o; h_prev W in) becomes, with the   \
   input part x + b added (b: 4H, or 6H with time gates, may be NULL), [sigma(i~), tanh(j~), sigma(f~),      \
   sigma(o~)] in place; with g12 (k x 2H, the time gates' pre-activations without their bias b[4H..6H))    \
   s1, s2 = sigma(g12 + b), i = sigma(i~) s1, f = sigma(f~) s2 (f also written to F);                     \
   c (k x H) holds c_{t-1} on entry and c_t on exit, h = o tanh(c_t) goes to out. With PD (k x 4H), KC,    \
   Q (k x 2H, time gates only): the backward's factors, see recurrence.LSTMSequence. */                     \
void lstm_fwd_##SUF(int k, int H, T *g, int ld_g, const T *x, int ld_x, const T *g12, int ld_s, T *F,       \
                    int ld_f, T *c, int ld_c,                                                              \
                    T *out, int ld_out, T *PD, int ld_pd, T *KC, int ld_kc, T *Q, int ld_q, const T *b) {   \
    int nb = g12 ? 6 * H : 4 * H;                                                                          \
    T bv[nb];                                                                                              \
    for (int j = 0; j < nb; j++) bv[j] = b ? b[j] : (T)0;                                                  \
    _Pragma("omp parallel for schedule(static) if(k * H >= 8192)")                                      \
    for (int i = 0; i < k; i++) {                                                                          \
        T cnv[H], tcv[H], a1v[H], a2v[H];                                                                  \
        T *restrict gi = g + (long)i * ld_g, *restrict gj = gi + H, *restrict gf = gi + 2 * H;             \
        T *restrict go = gi + 3 * H;                                                                       \
        const T *restrict xi = x + (long)i * ld_x;                                                         \
        T *restrict cc = c + (long)i * ld_c, *restrict o = out + (long)i * ld_out;                         \
        _Pragma("omp simd")                                                                                \
        for (int j = 0; j < H; j++) {                                                                      \
            gi[j] = sigm_##SUF(gi[j] + xi[j] + bv[j]);                                                     \
            gj[j] = TANH(gj[j] + xi[H + j] + bv[H + j]);                                                   \
            gf[j] = sigm_##SUF(gf[j] + xi[2 * H + j] + bv[2 * H + j]);                                     \
            go[j] = sigm_##SUF(go[j] + xi[3 * H + j] + bv[3 * H + j]);                                     \
        }                                                                                                  \
        if (g12) {                                                                                         \
            const T *restrict g1 = g12 + (long)i * ld_s, *restrict g2 = g1 + H;                            \
            T *restrict ff = F + (long)i * ld_f;                                                           \
            _Pragma("omp simd")                                                                            \
            for (int j = 0; j < H; j++) {                                                                  \
                a1v[j] = sigm_##SUF(g1[j] + bv[4 * H + j]); a2v[j] = sigm_##SUF(g2[j] + bv[5 * H + j]);    \
                ff[j] = gf[j] * a2v[j];                                                                    \
            }                                                                                              \
        } else {                                                                                           \
            _Pragma("omp simd")                                                                            \
            for (int j = 0; j < H; j++) { a1v[j] = (T)1; a2v[j] = (T)1; }                                  \
        }                                                                                                  \
        _Pragma("omp simd")                                                                                \
        for (int j = 0; j < H; j++) {                                                                      \
            cnv[j] = gf[j] * a2v[j] * cc[j] + gi[j] * a1v[j] * gj[j];                                      \
            tcv[j] = TANH(cnv[j]);                                                                         \
            o[j] = go[j] * tcv[j];                                                                         \
        }                                                                                                  \
        if (PD) {                                                                                          \
            T *restrict pd = PD + (long)i * ld_pd, *restrict kc = KC + (long)i * ld_kc;                    \
            _Pragma("omp simd")                                                                            \
            for (int j = 0; j < H; j++) {                                                                  \
                T si = gi[j], jj = gj[j], sf = gf[j], so = go[j], cp = cc[j], tc = tcv[j];                 \
                pd[j] = jj * a1v[j] * (si - si * si);                                                      \
                pd[H + j] = si * a1v[j] * ((T)1 - jj * jj);                                                \
                pd[2 * H + j] = cp * a2v[j] * (sf - sf * sf);                                              \
                pd[3 * H + j] = tc * (so - so * so);                                                       \
                kc[j] = so * ((T)1 - tc * tc);                                                             \
            }                                                                                              \
            if (Q) {                                                                                       \
                T *restrict q = Q + (long)i * ld_q;                                                        \
                _Pragma("omp simd")                                                                        \
                for (int j = 0; j < H; j++) {                                                              \
                    q[j] = gj[j] * gi[j] * (a1v[j] - a1v[j] * a1v[j]);                                     \
                    q[H + j] = cc[j] * gf[j] * (a2v[j] - a2v[j] * a2v[j]);                                 \
                }                                                                                          \
            }                                                                                              \
        }                                                                                                  \
        _Pragma("omp simd")                                                                                \
        for (int j = 0; j < H; j++) cc[j] = cnv[j];                                                        \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
/* LSTM backward, everything before the carried dh_{t-1} = DG W^T: dh = d_out + dh_carry,                 \
   dc = dc_carry + dh KC, DG = [dc, dc, dc, dh] * PD, dc_carry <- dc f; with Q (time gates) also the      \
   time gates' pre-activation gradients DS = [dc, dc] * Q. */                                              \
void lstm_bwd_##SUF(int k, int H, const T *d_out, int ld_do, const T *dh_carry, int ld_dh, T *dc_carry,    \
                    int ld_dc, const T *KC, int ld_kc, const T *PD, int ld_pd, const T *F, int ld_f,       \
                    T *DG, int ld_dg, const T *Q, int ld_q, T *DS, int ld_ds) {                            \
    _Pragma("omp parallel for schedule(static) if(k * H >= 8192)")                                      \
    for (int i = 0; i < k; i++) {                                                                          \
        const T *g = d_out + (long)i * ld_do, *hc = dh_carry + (long)i * ld_dh, *kc = KC + (long)i * ld_kc;\
        const T *pd = PD + (long)i * ld_pd, *f = F + (long)i * ld_f;                                       \
        T *cc = dc_carry + (long)i * ld_dc, *dg = DG + (long)i * ld_dg;                                    \
        const T *q = Q ? Q + (long)i * ld_q : 0;                                                           \
        T *ds = Q ? DS + (long)i * ld_ds : 0;                                                              \
        _Pragma("omp simd")                                                                                \
        for (int j = 0; j < H; j++) {                                                                      \
            T dh = g[j] + hc[j];                                                                           \
            T dc = cc[j] + dh * kc[j];                                                                     \
            if (q) { ds[j] = dc * q[j]; ds[H + j] = dc * q[H + j]; }                                     \
            dg[j] = dc * pd[j];                                                                            \
            dg[H + j] = dc * pd[H + j];                                                                    \
            dg[2 * H + j] = dc * pd[2 * H + j];                                                            \
            dg[3 * H + j] = dh * pd[3 * H + j];                                                            \
            cc[j] = dc * f[j];                                                                             \
        }                                                                                                  \
    }                                                                                                      \
}

/* Shared by the batch-norm kernels below. From the summed statistics of n rows (shifted by `shift`):
   mean, 1/sqrt(var + eps), the biased var, and BN's affine map y = x a + b. */
#define DEFINE_BN_COMMON(T, SUF)                                                                           \
static void bn_affine_##SUF(int C, const double *sum, const double *sq, double n, const T *shift,          \
                            const T *gamma, const T *beta, double eps, T *mean_out, T *invstd_out,         \
                            T *var_out, T *a, T *b) {                                                      \
    for (int j = 0; j < C; j++) {                                                                          \
        double m = sum[j] / n, var = sq[j] / n - m * m;                                                    \
        if (var < 0) var = 0;                                                                              \
        double mean = m + (double)shift[j], inv = 1.0 / sqrt(var + eps);                                   \
        mean_out[j] = (T)mean; invstd_out[j] = (T)inv; var_out[j] = (T)var;                                \
        a[j] = (T)inv * gamma[j];                                                                          \
        b[j] = beta[j] - (T)mean * a[j];                                                                   \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
/* The backward's per-column factors from the saved statistics: a = gamma invstd and b = beta - mean a     \
   (the forward's affine map, to recompute the ReLU mask), mi = mean invstd (xhat = x invstd - mi). */     \
static void bn_bwd_factors_##SUF(int C, const T *mean, const T *invstd, const T *gamma, const T *beta,     \
                                 T *a, T *b, T *mi) {                                                      \
    for (int j = 0; j < C; j++) {                                                                          \
        a[j] = invstd[j] * gamma[j]; b[j] = beta[j] - mean[j] * a[j]; mi[j] = mean[j] * invstd[j];         \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
/* From the summed g and g xhat over n rows: dbeta, dgamma and the write pass's k1 = a sum(g) / n,          \
   k2 = a sum(g xhat) / n. */                                                                              \
static void bn_bwd_sums_##SUF(int C, const double *sg, const double *sgx, double n, const T *a, T *dgamma,  \
                              T *dbeta, T *k1, T *k2) {                                                    \
    for (int j = 0; j < C; j++) {                                                                          \
        dgamma[j] = (T)sgx[j]; dbeta[j] = (T)sg[j];                                                        \
        k1[j] = (T)(sg[j] / n) * a[j];                                                                     \
        k2[j] = (T)(sgx[j] / n) * a[j];                                                                    \
    }                                                                                                      \
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
#define ROW_TERMS(T)                                                                                       \
    const T *kr = K ? K + ((long)b * L + t) * C : zero, *rr = R ? R + ((long)b * Q + q) * C : zero;

#define DEFINE_BN_KERNELS(T, SUF, SQRT)                                                                    \
                                                                                                           \
void bn_relu_fwd_##SUF(long B, int Q, int L, int C, const T *z, const T *K, const T *R, const T *gamma,     \
                       const T *beta, double eps, T *y, T *mean_out, T *invstd_out, T *var_out) {          \
    long N = B * Q * L;                                                                                    \
    T zero[C], shift[C];                                                                                   \
    for (int j = 0; j < C; j++) {                                                                          \
        zero[j] = 0;                                                                                       \
        shift[j] = z[j] + (K ? K[j] : 0) + (R ? R[j] : 0);                                                 \
    }                                                                                                      \
    double sum[C], sq[C];                                                                                  \
    for (int j = 0; j < C; j++) { sum[j] = 0; sq[j] = 0; }                                                 \
    _Pragma("omp parallel")                                                                                \
    {                                                                                                      \
        double ls[C], lq[C];                                                                               \
        for (int j = 0; j < C; j++) { ls[j] = 0; lq[j] = 0; }                                              \
        _Pragma("omp for schedule(static)")                                                                \
        for (long b = 0; b < B; b++)                                                                       \
            for (int q = 0; q < Q; q++)                                                                    \
                for (int t = 0; t < L; t++) {                                                              \
                    const T *row = z + (((long)b * Q + q) * L + t) * C;                                    \
                    ROW_TERMS(T)                                                                           \
                    _Pragma("omp simd")                                                                    \
                    for (int j = 0; j < C; j++) {                                                          \
                        double v = (double)(row[j] + kr[j] + rr[j]) - (double)shift[j];                    \
                        ls[j] += v; lq[j] += v * v;                                                        \
                    }                                                                                      \
                }                                                                                          \
        _Pragma("omp critical")                                                                            \
        for (int j = 0; j < C; j++) { sum[j] += ls[j]; sq[j] += lq[j]; }                                   \
    }                                                                                                      \
    T a[C], bb[C]; \
    bn_affine_##SUF(C, sum, sq, (double)N, shift, gamma, beta, eps, mean_out, invstd_out, var_out, a, bb); \
    _Pragma("omp parallel for schedule(static)")                                                           \
    for (long b = 0; b < B; b++)                                                                           \
        for (int q = 0; q < Q; q++)                                                                        \
            for (int t = 0; t < L; t++) {                                                                  \
                long i = ((long)b * Q + q) * L + t;                                                        \
                const T *row = z + i * C;                                                                  \
                T *out = y + i * C;                                                                        \
                ROW_TERMS(T)                                                                               \
                _Pragma("omp simd")                                                                        \
                for (int j = 0; j < C; j++) {                                                              \
                    T v = (row[j] + kr[j] + rr[j]) * a[j] + bb[j];                                         \
                    out[j] = v > 0 ? v : (T)0;                                                             \
                }                                                                                          \
            }                                                                                              \
}                                                                                                          \
                                                                                                           \
void bn_relu_bwd_##SUF(long B, int Q, int L, int C, const T *dy, const T *z, const T *K, const T *R,       \
                       const T *mean, const T *invstd, const T *gamma, const T *beta, T *dz, T *dK, T *dR, \
                       T *dgamma, T *dbeta) {                                                              \
    long N = B * Q * L;                                                                                    \
    T zero[C], a[C], bb[C], mi[C]; \
    for (int j = 0; j < C; j++) zero[j] = 0; \
    bn_bwd_factors_##SUF(C, mean, invstd, gamma, beta, a, bb, mi); \
    double sg[C], sgx[C];                                                                                  \
    for (int j = 0; j < C; j++) { sg[j] = 0; sgx[j] = 0; }                                                 \
    _Pragma("omp parallel")                                                                                \
    {                                                                                                      \
        double lg[C], lgx[C];                                                                              \
        T fg[C], fgx[C];                                                                                   \
        for (int j = 0; j < C; j++) { lg[j] = 0; lgx[j] = 0; fg[j] = 0; fgx[j] = 0; }                      \
        long n_in_block = 0;                                                                               \
        _Pragma("omp for schedule(static)")                                                                \
        for (long b = 0; b < B; b++)                                                                       \
            for (int q = 0; q < Q; q++)                                                                    \
                for (int t = 0; t < L; t++) {                                                              \
                    long i = ((long)b * Q + q) * L + t;                                                    \
                    const T *row = z + i * C, *g = dy + i * C;                                             \
                    ROW_TERMS(T)                                                                           \
                    _Pragma("omp simd")                                                                    \
                    for (int j = 0; j < C; j++) {                                                          \
                        T x = row[j] + kr[j] + rr[j];                                                      \
                        T gm = (x * a[j] + bb[j]) > 0 ? g[j] : (T)0;                                       \
                        fg[j] += gm;                                                                       \
                        fgx[j] += gm * (x * invstd[j] - mi[j]);                                            \
                    }                                                                                      \
                    if (++n_in_block == 64) { /* flush the short float sums into double */                 \
                        for (int j = 0; j < C; j++) { lg[j] += fg[j]; lgx[j] += fgx[j]; fg[j] = 0; fgx[j] = 0; } \
                        n_in_block = 0;                                                                    \
                    }                                                                                      \
                }                                                                                          \
        _Pragma("omp critical")                                                                            \
        for (int j = 0; j < C; j++) { sg[j] += lg[j] + fg[j]; sgx[j] += lgx[j] + fgx[j]; }                 \
    }                                                                                                      \
    T k1[C], k2[C]; \
    bn_bwd_sums_##SUF(C, sg, sgx, (double)N, a, dgamma, dbeta, k1, k2); \
    /* parallel over b: each instance's dK, dR rows are written by one thread only */                     \
    _Pragma("omp parallel for schedule(static)")                                                           \
    for (long b = 0; b < B; b++) {                                                                         \
        if (dK) for (long i = 0; i < (long)L * C; i++) dK[(long)b * L * C + i] = 0;                        \
        for (int q = 0; q < Q; q++) {                                                                      \
            T *dr = dR ? dR + ((long)b * Q + q) * C : 0;                                                   \
            if (dr) for (int j = 0; j < C; j++) dr[j] = 0;                                                 \
            for (int t = 0; t < L; t++) {                                                                  \
                long i = ((long)b * Q + q) * L + t;                                                        \
                const T *row = z + i * C, *g = dy + i * C;                                                 \
                T *out = dz + i * C;                                                                       \
                ROW_TERMS(T)                                                                               \
                _Pragma("omp simd")                                                                        \
                for (int j = 0; j < C; j++) {                                                              \
                    T x = row[j] + kr[j] + rr[j];                                                          \
                    T gm = (x * a[j] + bb[j]) > 0 ? g[j] : (T)0;                                           \
                    out[j] = a[j] * gm - k1[j] - (x * invstd[j] - mi[j]) * k2[j];                          \
                }                                                                                          \
                if (dK) {                                                                                  \
                    T *dk = dK + ((long)b * L + t) * C;                                                    \
                    _Pragma("omp simd")                                                                    \
                    for (int j = 0; j < C; j++) dk[j] += out[j];                                           \
                }                                                                                          \
                if (dr) {                                                                                  \
                    _Pragma("omp simd")                                                                    \
                    for (int j = 0; j < C; j++) dr[j] += out[j];                                           \
                }                                                                                          \
            }                                                                                              \
        }                                                                                                  \
    }                                                                                                      \
}

/* The per-(instance, candidate, position) part of a DIN scorer's first layer (layers.din_first_layer):
   z[b,c,t] += K[b,t] + Q[b,c] in one pass, and the reductions of its backward in one pass each:
   dK[b,t] = sum_c dz[b,c,t], dQ[b,c] = sum_t dz[b,c,t]; for prod[b,c,t] = a[b,t] * r[b,c]:
   da[b,t] = sum_c dprod[b,c,t] * r[b,c], dr[b,c] = sum_t dprod[b,c,t] * a[b,t].
   z, dz, dprod are contiguous (B, C, L, h); K, dK (B, L, h); Q, dQ (B, C, h); a (B, L, d) and r (B, C, d)
   are given by row pointers with strides (sa_b, sa_t), (sr_b, sr_c); da, dr are contiguous. */
#define DEFINE_DIN_KERNELS(T, SUF)                                                                         \
                                                                                                           \
void din_add_kq_##SUF(long B, int C, int L, int h, T *z, const T *K, const T *Q) {                         \
    _Pragma("omp parallel for schedule(static)")                                                           \
    for (long bc = 0; bc < B * C; bc++) {                                                                  \
        long b = bc / C;                                                                                   \
        const T *q = Q + bc * h;                                                                           \
        for (int t = 0; t < L; t++) {                                                                      \
            T *zz = z + (bc * L + t) * h;                                                                  \
            const T *k = K + (b * L + t) * h;                                                              \
            _Pragma("omp simd")                                                                            \
            for (int j = 0; j < h; j++) zz[j] += k[j] + q[j];                                              \
        }                                                                                                  \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
void din_sum_kq_##SUF(long B, int C, int L, int h, const T *dz, T *dK, T *dQ) {                            \
    _Pragma("omp parallel for schedule(static)")                                                           \
    for (long b = 0; b < B; b++) {                                                                         \
        T *dk = dK + b * L * h;                                                                            \
        for (long i = 0; i < (long)L * h; i++) dk[i] = 0;                                                  \
        for (int c = 0; c < C; c++) {                                                                      \
            T *dq = dQ + (b * C + c) * h;                                                                  \
            for (int j = 0; j < h; j++) dq[j] = 0;                                                         \
            for (int t = 0; t < L; t++) {                                                                  \
                const T *g = dz + ((b * C + c) * L + t) * h;                                               \
                T *k = dk + (long)t * h;                                                                   \
                _Pragma("omp simd")                                                                        \
                for (int j = 0; j < h; j++) { k[j] += g[j]; dq[j] += g[j]; }                               \
            }                                                                                              \
        }                                                                                                  \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
void din_prod_bwd_##SUF(long B, int C, int L, int d, const T *dprod, const T *a, long sa_b, long sa_t,     \
                        const T *r, long sr_b, long sr_c, T *da, T *dr) {                                  \
    _Pragma("omp parallel for schedule(static)")                                                           \
    for (long b = 0; b < B; b++) {                                                                         \
        T *dab = da + b * L * d;                                                                           \
        for (long i = 0; i < (long)L * d; i++) dab[i] = 0;                                                 \
        for (int c = 0; c < C; c++) {                                                                      \
            const T *rc = r + b * sr_b + c * sr_c;                                                         \
            T *drc = dr + (b * C + c) * d;                                                                 \
            for (int j = 0; j < d; j++) drc[j] = 0;                                                        \
            for (int t = 0; t < L; t++) {                                                                  \
                const T *g = dprod + ((b * C + c) * L + t) * d, *at = a + b * sa_b + t * sa_t;             \
                T *dat = dab + (long)t * d;                                                                \
                _Pragma("omp simd")                                                                        \
                for (int j = 0; j < d; j++) { dat[j] += g[j] * rc[j]; drc[j] += g[j] * at[j]; }            \
            }                                                                                              \
        }                                                                                                  \
    }                                                                                                      \
}

/* The last hidden layer of a scorer MLP with its output unit: s = relu(BN(x)) . w + b0 (one score per row),
   without writing relu(BN(x)) at all; the backward recomputes it from x. Same statistics as bn_relu_fwd;
   optional row weights wt (the ragged DIN rows' multiplicities, n_eff = their sum; NULL: 1 and N), with
   ds and dx then totals over each row's copies.
   Backward with ds (N): g = ds_i w_j [pre > 0]; dbeta = sum g, dgamma = sum g xhat, dw = sum ds_i y_ij,
   dx = gamma invstd (g - dbeta / N - xhat dgamma / N). */
#define DEFINE_BN_DOT_KERNELS(T, SUF)                                                                      \
                                                                                                           \
void bn_relu_dot_fwd_##SUF(long N, int C, const T *x, long ld_x, const T *gamma, const T *beta,            \
                           double eps, const T *w, double b0, T *s, T *mean_out, T *invstd_out,            \
                           T *var_out, const T *wt, double n_eff) {                                        \
    double sum[C], sq[C];                                                                                  \
    const T *shift = x;                                                                                    \
    for (int j = 0; j < C; j++) { sum[j] = 0; sq[j] = 0; }                                                 \
    _Pragma("omp parallel")                                                                                \
    {                                                                                                      \
        double ls[C], lq[C];                                                                               \
        for (int j = 0; j < C; j++) { ls[j] = 0; lq[j] = 0; }                                              \
        _Pragma("omp for schedule(static)")                                                                \
        for (long i = 0; i < N; i++) {                                                                     \
            const T *row = x + i * ld_x;                                                                   \
            double wi = wt ? (double)wt[i] : 1.0;                                                          \
            _Pragma("omp simd")                                                                            \
            for (int j = 0; j < C; j++) { double v = (double)row[j] - (double)shift[j]; ls[j] += wi * v; lq[j] += wi * v * v; } \
        }                                                                                                  \
        _Pragma("omp critical")                                                                            \
        for (int j = 0; j < C; j++) { sum[j] += ls[j]; sq[j] += lq[j]; }                                   \
    }                                                                                                      \
    T a[C], b[C]; \
    bn_affine_##SUF(C, sum, sq, n_eff, shift, gamma, beta, eps, mean_out, invstd_out, var_out, a, b); \
    _Pragma("omp parallel for schedule(static)")                                                           \
    for (long i = 0; i < N; i++) {                                                                         \
        const T *row = x + i * ld_x;                                                                       \
        T acc = 0;                                                                                         \
        _Pragma("omp simd reduction(+:acc)")                                                               \
        for (int j = 0; j < C; j++) { T v = row[j] * a[j] + b[j]; acc += (v > 0 ? v : (T)0) * w[j]; }      \
        s[i] = acc + (T)b0;                                                                                \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
void bn_relu_dot_bwd_##SUF(long N, int C, const T *ds, const T *x, long ld_x, const T *mean,               \
                           const T *invstd, const T *gamma, const T *beta, const T *w, T *dx, long ld_dx,  \
                           T *dgamma, T *dbeta, T *dw, const T *wt, double n_eff) {                        \
    T a[C], b[C], mi[C]; \
    bn_bwd_factors_##SUF(C, mean, invstd, gamma, beta, a, b, mi); \
    double sg[C], sgx[C], sw[C];                                                                           \
    for (int j = 0; j < C; j++) { sg[j] = 0; sgx[j] = 0; sw[j] = 0; }                                      \
    _Pragma("omp parallel")                                                                                \
    {                                                                                                      \
        double lg[C], lgx[C], lw[C];                                                                       \
        T bg[C], bgx[C], bw[C];                                                                            \
        for (int j = 0; j < C; j++) { lg[j] = 0; lgx[j] = 0; lw[j] = 0; bg[j] = 0; bgx[j] = 0; bw[j] = 0; } \
        long n_in_block = 0;                                                                               \
        _Pragma("omp for schedule(static)")                                                                \
        for (long i = 0; i < N; i++) {                                                                     \
            const T *row = x + i * ld_x;                                                                   \
            T d = ds[i];                                                                                   \
            _Pragma("omp simd")                                                                            \
            for (int j = 0; j < C; j++) {                                                                  \
                T pre = row[j] * a[j] + b[j];                                                              \
                T gm = pre > 0 ? d * w[j] : (T)0;                                                          \
                bg[j] += gm;                                                                               \
                bgx[j] += gm * (row[j] * invstd[j] - mi[j]);                                               \
                bw[j] += pre > 0 ? d * pre : (T)0;                                                         \
            }                                                                                              \
            if (++n_in_block == 64) { /* flush the short float sums into double */                         \
                for (int j = 0; j < C; j++) {                                                              \
                    lg[j] += bg[j]; lgx[j] += bgx[j]; lw[j] += bw[j]; bg[j] = 0; bgx[j] = 0; bw[j] = 0;    \
                }                                                                                          \
                n_in_block = 0;                                                                            \
            }                                                                                              \
        }                                                                                                  \
        _Pragma("omp critical")                                                                            \
        for (int j = 0; j < C; j++) { sg[j] += lg[j] + bg[j]; sgx[j] += lgx[j] + bgx[j]; sw[j] += lw[j] + bw[j]; } \
    }                                                                                                      \
    T k1[C], k2[C]; \
    bn_bwd_sums_##SUF(C, sg, sgx, n_eff, a, dgamma, dbeta, k1, k2); \
    for (int j = 0; j < C; j++) dw[j] = (T)sw[j]; \
    _Pragma("omp parallel for schedule(static)")                                                           \
    for (long i = 0; i < N; i++) {                                                                         \
        const T *row = x + i * ld_x;                                                                       \
        T *out = dx + i * ld_dx;                                                                           \
        T d = ds[i], wi = wt ? wt[i] : (T)1;                                                               \
        _Pragma("omp simd")                                                                                \
        for (int j = 0; j < C; j++) {                                                                      \
            T gm = (row[j] * a[j] + b[j]) > 0 ? d * w[j] : (T)0;                                           \
            out[j] = a[j] * gm - wi * (k1[j] + (row[j] * invstd[j] - mi[j]) * k2[j]);                      \
        }                                                                                                  \
    }                                                                                                      \
}

/* Ragged rows of a DIN scorer (training): instance b has n_b valid positions (left-aligned, n_b <= L);
   its valid rows (q, t < n_b) come in the order (b, q, t), starting at off[b] = Q * sum_{b' < b} n_b',
   V rows in all; then one row per (b, q), V + b * Q + q, standing for the L - n_b padded positions, whose
   keys are all equal (zero, or the padding item's), so their rows are equal too: it enters the batch
   statistics with weight L - n_b, and its gradient is the total over those positions (shared out
   equally among the padded keys). Exact, and 1 - V / (B Q L) of the rows are never computed (about 22 %
   on ml100k). The padding row's key is a[b, min(n_b, L - 1)]. */
#define RAGGED_ROWS_BEGIN                                                                                  \
    long nb = n[b], wpad = L - nb, tpad = nb < L ? nb : L - 1;                                             \
    (void)wpad; (void)tpad;

#define DEFINE_RAGGED_KERNELS(T, SUF)                                                                      \
                                                                                                           \
void ragged_prod_fwd_##SUF(long B, int Q, int L, int d, const long *n, const long *off, long V,           \
                           const T *a, long sa_b, long sa_t, const T *r, long sr_b, long sr_q, T *prod) {  \
    _Pragma("omp parallel for schedule(static)")                                                           \
    for (long b = 0; b < B; b++) {                                                                         \
        RAGGED_ROWS_BEGIN                                                                                  \
        for (int q = 0; q < Q; q++) {                                                                      \
            const T *rq = r + b * sr_b + q * sr_q;                                                         \
            for (long t = 0; t < nb; t++) {                                                                \
                const T *at = a + b * sa_b + t * sa_t;                                                     \
                T *p = prod + (off[b] + q * nb + t) * d;                                                   \
                _Pragma("omp simd")                                                                        \
                for (int j = 0; j < d; j++) p[j] = at[j] * rq[j];                                          \
            }                                                                                              \
            const T *ap = a + b * sa_b + tpad * sa_t;                                                      \
            T *p = prod + (V + b * Q + q) * d;                                                             \
            _Pragma("omp simd")                                                                            \
            for (int j = 0; j < d; j++) p[j] = ap[j] * rq[j];                                              \
        }                                                                                                  \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
void ragged_prod_bwd_##SUF(long B, int Q, int L, int d, const long *n, const long *off, long V,           \
                           const T *dprod, const T *a, long sa_b, long sa_t, const T *r, long sr_b,        \
                           long sr_q, T *da, T *dr) {                                                      \
    _Pragma("omp parallel for schedule(static)")                                                           \
    for (long b = 0; b < B; b++) {                                                                         \
        RAGGED_ROWS_BEGIN                                                                                  \
        T *dab = da + b * L * d, pad[d];                                                                   \
        for (long i = 0; i < (long)L * d; i++) dab[i] = 0;                                                 \
        for (int j = 0; j < d; j++) pad[j] = 0;                                                            \
        const T *ap = a + b * sa_b + tpad * sa_t;                                                          \
        for (int q = 0; q < Q; q++) {                                                                      \
            const T *rq = r + b * sr_b + q * sr_q;                                                         \
            T *drq = dr + (b * Q + q) * d;                                                                 \
            for (int j = 0; j < d; j++) drq[j] = 0;                                                        \
            for (long t = 0; t < nb; t++) {                                                                \
                const T *g = dprod + (off[b] + q * nb + t) * d, *at = a + b * sa_b + t * sa_t;             \
                T *dat = dab + t * d;                                                                      \
                _Pragma("omp simd")                                                                        \
                for (int j = 0; j < d; j++) { dat[j] += g[j] * rq[j]; drq[j] += g[j] * at[j]; }            \
            }                                                                                              \
            const T *g = dprod + (V + b * Q + q) * d;                                                      \
            _Pragma("omp simd")                                                                            \
            for (int j = 0; j < d; j++) { pad[j] += g[j] * rq[j]; drq[j] += g[j] * ap[j]; }                \
        }                                                                                                  \
        for (long t = nb; t < L; t++)                                                                      \
            for (int j = 0; j < d; j++) dab[t * d + j] = pad[j] / (T)wpad;                                 \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
/* relu(BN(x)) over ragged rows, x = z + K[b, t] + R[b, q] (t = the padding key's position for the        \
   padding rows), weights 1 and L - n_b in the statistics; y has the rows of z. */                         \
void bn_relu_ragged_fwd_##SUF(long B, int Q, int L, int C, const long *n, const long *off, long V,        \
                              const T *z, const T *K, const T *R, const T *gamma, const T *beta,           \
                              double eps, T *y, T *mean_out, T *invstd_out, T *var_out) {                  \
    double N = (double)B * Q * L;                                                                          \
    T shift[C];                                                                                            \
    for (int j = 0; j < C; j++) shift[j] = z[j] + K[j] + R[j];                                             \
    double sum[C], sq[C];                                                                                  \
    for (int j = 0; j < C; j++) { sum[j] = 0; sq[j] = 0; }                                                 \
    _Pragma("omp parallel")                                                                                \
    {                                                                                                      \
        double ls[C], lq[C];                                                                               \
        for (int j = 0; j < C; j++) { ls[j] = 0; lq[j] = 0; }                                              \
        _Pragma("omp for schedule(static)")                                                                \
        for (long b = 0; b < B; b++) {                                                                     \
            RAGGED_ROWS_BEGIN                                                                              \
            for (int q = 0; q < Q; q++) {                                                                  \
                const T *rr = R + (b * Q + q) * C;                                                         \
                for (long t = 0; t < nb; t++) {                                                            \
                    const T *row = z + (off[b] + q * nb + t) * C, *kr = K + (b * L + t) * C;               \
                    _Pragma("omp simd")                                                                    \
                    for (int j = 0; j < C; j++) {                                                          \
                        double v = (double)(row[j] + kr[j] + rr[j]) - (double)shift[j];                    \
                        ls[j] += v; lq[j] += v * v;                                                        \
                    }                                                                                      \
                }                                                                                          \
                if (wpad > 0) {                                                                            \
                    const T *row = z + (V + b * Q + q) * C, *kr = K + (b * L + tpad) * C;                  \
                    double w = (double)wpad;                                                               \
                    for (int j = 0; j < C; j++) {                                                          \
                        double v = (double)(row[j] + kr[j] + rr[j]) - (double)shift[j];                    \
                        ls[j] += w * v; lq[j] += w * v * v;                                                \
                    }                                                                                      \
                }                                                                                          \
            }                                                                                              \
        }                                                                                                  \
        _Pragma("omp critical")                                                                            \
        for (int j = 0; j < C; j++) { sum[j] += ls[j]; sq[j] += lq[j]; }                                   \
    }                                                                                                      \
    T a_[C], bb[C]; \
    bn_affine_##SUF(C, sum, sq, N, shift, gamma, beta, eps, mean_out, invstd_out, var_out, a_, bb); \
    _Pragma("omp parallel for schedule(static)")                                                           \
    for (long b = 0; b < B; b++) {                                                                         \
        RAGGED_ROWS_BEGIN                                                                                  \
        for (int q = 0; q < Q; q++) {                                                                      \
            const T *rr = R + (b * Q + q) * C;                                                             \
            for (long t = 0; t <= nb; t++) { /* t == nb: the padding row */                                \
                long i = t < nb ? off[b] + q * nb + t : V + b * Q + q;                                     \
                const T *row = z + i * C, *kr = K + (b * L + (t < nb ? t : tpad)) * C;                     \
                T *out = y + i * C;                                                                        \
                _Pragma("omp simd")                                                                        \
                for (int j = 0; j < C; j++) {                                                              \
                    T v = (row[j] + kr[j] + rr[j]) * a_[j] + bb[j];                                        \
                    out[j] = v > 0 ? v : (T)0;                                                             \
                }                                                                                          \
            }                                                                                              \
        }                                                                                                  \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
void bn_relu_ragged_bwd_##SUF(long B, int Q, int L, int C, const long *n, const long *off, long V,        \
                              const T *dy, const T *z, const T *K, const T *R, const T *mean,              \
                              const T *invstd, const T *gamma, const T *beta, T *dz, T *dK, T *dR,         \
                              T *dgamma, T *dbeta) {                                                       \
    double N = (double)B * Q * L;                                                                          \
    T a_[C], bb[C], mi[C]; \
    bn_bwd_factors_##SUF(C, mean, invstd, gamma, beta, a_, bb, mi); \
    double sg[C], sgx[C];                                                                                  \
    for (int j = 0; j < C; j++) { sg[j] = 0; sgx[j] = 0; }                                                 \
    _Pragma("omp parallel")                                                                                \
    {                                                                                                      \
        double lg[C], lgx[C];                                                                              \
        for (int j = 0; j < C; j++) { lg[j] = 0; lgx[j] = 0; }                                             \
        _Pragma("omp for schedule(static)")                                                                \
        for (long b = 0; b < B; b++) {                                                                     \
            RAGGED_ROWS_BEGIN                                                                              \
            T fg[C], fgx[C];                                                                               \
            for (int j = 0; j < C; j++) { fg[j] = 0; fgx[j] = 0; }                                         \
            for (int q = 0; q < Q; q++) {                                                                  \
                const T *rr = R + (b * Q + q) * C;                                                         \
                for (long t = 0; t <= nb; t++) {                                                           \
                    if (t == nb && wpad == 0) break;                                                       \
                    long i = t < nb ? off[b] + q * nb + t : V + b * Q + q;                                 \
                    const T *row = z + i * C, *g = dy + i * C, *kr = K + (b * L + (t < nb ? t : tpad)) * C;\
                    _Pragma("omp simd")                                                                    \
                    for (int j = 0; j < C; j++) {                                                          \
                        T x = row[j] + kr[j] + rr[j];                                                      \
                        T gm = (x * a_[j] + bb[j]) > 0 ? g[j] : (T)0;                                      \
                        fg[j] += gm;                                                                       \
                        fgx[j] += gm * (x * invstd[j] - mi[j]);                                            \
                    }                                                                                      \
                }                                                                                          \
            }                                                                                              \
            for (int j = 0; j < C; j++) { lg[j] += fg[j]; lgx[j] += fgx[j]; }                              \
        }                                                                                                  \
        _Pragma("omp critical")                                                                            \
        for (int j = 0; j < C; j++) { sg[j] += lg[j]; sgx[j] += lgx[j]; }                                  \
    }                                                                                                      \
    T k1[C], k2[C]; \
    bn_bwd_sums_##SUF(C, sg, sgx, N, a_, dgamma, dbeta, k1, k2); \
    _Pragma("omp parallel for schedule(static)")                                                           \
    for (long b = 0; b < B; b++) {                                                                         \
        RAGGED_ROWS_BEGIN                                                                                  \
        T *dkb = dK + b * L * C, pad[C];                                                                   \
        for (long i = 0; i < (long)L * C; i++) dkb[i] = 0;                                                 \
        for (int j = 0; j < C; j++) pad[j] = 0;                                                            \
        for (int q = 0; q < Q; q++) {                                                                      \
            const T *rr = R + (b * Q + q) * C;                                                             \
            T *dr = dR + (b * Q + q) * C;                                                                  \
            for (int j = 0; j < C; j++) dr[j] = 0;                                                         \
            for (long t = 0; t <= nb; t++) {                                                               \
                int is_pad = t == nb;                                                                      \
                long i = is_pad ? V + b * Q + q : off[b] + q * nb + t;                                     \
                const T *row = z + i * C, *g = dy + i * C, *kr = K + (b * L + (is_pad ? tpad : t)) * C;    \
                T *out = dz + i * C, w = is_pad ? (T)wpad : (T)1;                                          \
                _Pragma("omp simd")                                                                        \
                for (int j = 0; j < C; j++) {                                                              \
                    T x = row[j] + kr[j] + rr[j];                                                          \
                    T gm = (x * a_[j] + bb[j]) > 0 ? g[j] : (T)0;                                          \
                    out[j] = a_[j] * gm - w * (k1[j] + (x * invstd[j] - mi[j]) * k2[j]);                   \
                }                                                                                          \
                if (is_pad && wpad == 0) { for (int j = 0; j < C; j++) out[j] = 0; continue; }             \
                T *dk = is_pad ? pad : dkb + t * C;                                                        \
                _Pragma("omp simd")                                                                        \
                for (int j = 0; j < C; j++) { dk[j] += out[j]; dr[j] += out[j]; }                          \
            }                                                                                              \
        }                                                                                                  \
        for (long t = nb; t < L; t++)                                                                      \
            for (int j = 0; j < C; j++) dkb[t * C + j] = pad[j] / (T)wpad;                                 \
    }                                                                                                      \
}

DEFINE_BN_COMMON(float, f32)
DEFINE_BN_COMMON(double, f64)
DEFINE_KERNELS(float, f32, expf, tanhf)
DEFINE_KERNELS(double, f64, exp, tanh)
DEFINE_RAGGED_KERNELS(float, f32)
DEFINE_RAGGED_KERNELS(double, f64)
DEFINE_BN_DOT_KERNELS(float, f32)
DEFINE_BN_DOT_KERNELS(double, f64)
DEFINE_DIN_KERNELS(float, f32)
DEFINE_DIN_KERNELS(double, f64)
DEFINE_BN_KERNELS(float, f32, sqrtf)
DEFINE_BN_KERNELS(double, f64, sqrt)

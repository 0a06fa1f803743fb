/* cblas_sgemm for MLX's Linux CPU wheel, forwarded to the OpenBLAS that numpy ships.
 *
 * mlx[cpu] bundles the reference BLAS, whose sgemm runs near 1 GFLOP/s on the test
 * machine; numpy's OpenBLAS is 30x faster but exports its symbols under a prefix and
 * with 64-bit integers. Preloaded (LD_PRELOAD) by `make test` only: see docs/testing.md.
 */
#include <stdint.h>

extern void scipy_cblas_sgemm64_(int order, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                                 float alpha, const float *a, int64_t lda, const float *b, int64_t ldb,
                                 float beta, float *c, int64_t ldc);

void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
                 int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    scipy_cblas_sgemm64_(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

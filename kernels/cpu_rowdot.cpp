// Linear layers of a few rows (M <= ~16) in float32 on AVX2+FMA, reading the weight in place.
//
// out[m, n] = sum_k x[m, k] * w[n, k] with w row-major [N, K] (torch's own layout: no copy).
// The weights are streamed once: for each tile of NN weight rows, every row of x is multiplied
// while those rows are in cache; NN x MM accumulators (ymm registers) per tile, chosen so AVX2's 16
// registers hold them and enough independent FMA chains hide the FMA latency. While a tile is
// multiplied, the next tile's rows are prefetched at the same pace (one tile ahead): prefetching
// each row a fixed distance ahead of itself left 5 rows compute-then-wait, 1.6x one row on the
// 2-core EPYC (float32, one thread, the 1.5B's linears: 260 vs 165 ms); one tile ahead, 1.1x
// (160 vs 144). The prefetches go to L2 (T1), every 32 bytes: into L1 (T0) they were capped by
// L1's few miss buffers, which on another 2-core EPYC (2.6 GHz, ~30 GB/s from one core) left 5
// rows at 420 ms against 300 for one; to L2, 209 against 199 (one row itself 1.5x faster).
// On several threads the weight's rows are split between them (rowdot_f32_threads, OpenMP: torch's
// own runtime, whose libgomp.so.1 is loaded first, so its threads and their pinning are reused):
// on the 2-core EPYC (avx512_bf16, ~30 GB/s from one core) the 1.5B's linears at one row took
// 158 ms on two threads against 213 on one and 222 for oneDNN's pack on two, which splits one
// row's product badly (its four rows cost it 186). Built without OpenMP (a compiler that lacks it)
// the pragma is ignored and the shares run one after another on the calling thread.
// Built on first use by cpu_rowdot.py with g++ -O3 -mavx2 -mfma -fopenmp; its reference is F.linear.
#include <immintrin.h>
#include <stdint.h>

static inline float hsum(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

// out[b, a] = sum_k w[a, k] * x[b, k] for a < NN rows of w, b < MM rows of x; prefetches the NN
// rows from `next` (nullptr: none)
template <int NN, int MM>
static inline void tile(const float* x, long ldx, const float* w, long ldw, float* out, long ldo, int K,
                        const float* next) {
    __m256 acc[NN][MM];
    for (int a = 0; a < NN; a++) for (int b = 0; b < MM; b++) acc[a][b] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 wv[NN];
        for (int a = 0; a < NN; a++) {
            if (next != nullptr) _mm_prefetch((const char*)(next + a * ldw + k), _MM_HINT_T1);  // (twice a line: a retry)
            wv[a] = _mm256_loadu_ps(w + a * ldw + k);
        }
        for (int b = 0; b < MM; b++) {
            __m256 xv = _mm256_loadu_ps(x + b * ldx + k);
            for (int a = 0; a < NN; a++) acc[a][b] = _mm256_fmadd_ps(wv[a], xv, acc[a][b]);
        }
    }
    for (int a = 0; a < NN; a++) for (int b = 0; b < MM; b++) {
        float s = hsum(acc[a][b]);
        for (int kk = k; kk < K; kk++) s += w[a * ldw + kk] * x[b * ldx + kk];
        out[b * ldo + a] = s;
    }
}

// all n in [n0, n1) for MM rows of x; rows below `end` (>= n1) may be prefetched
template <int NN, int MM>
static inline void strip(const float* x, const float* w, float* out, int N, int K, int n0, int n1, int end) {
    int n = n0;
    for (; n + NN <= n1; n += NN)
        tile<NN, MM>(x, K, w + (long)n * K, K, out + n, N, K, n + 2 * NN <= end ? w + (long)(n + NN) * K : nullptr);
    for (; n < n1; n++)
        tile<1, MM>(x, K, w + (long)n * K, K, out + n, N, K, n + 2 <= end ? w + (long)(n + 1) * K : nullptr);
}

#ifndef NB_BYTES
#define NB_BYTES (384 * 1024)
#endif

extern "C" void rowdot_f32(const float* x, const float* w, float* out, int M, int N, int K, int n0, int n1) {
    // weights stream once: for M <= 6 one strip; beyond, n-blocks of about NB_BYTES of weight rows
    // (in L2) swept per m-tile
    const int NB = M <= 6 ? n1 - n0 : NB_BYTES / (K * 4) < 12 ? 12 : NB_BYTES / (K * 4) / 12 * 12;
    for (int nb = n0; nb < n1; nb += NB) {
        int ne = nb + NB < n1 ? nb + NB : n1;
        int m = 0;
        for (; M - m >= 6; m += 6) strip<2, 6>(x + (long)m * K, w, out + (long)m * N, N, K, nb, ne, n1);
        const float* xm = x + (long)m * K; float* om = out + (long)m * N;
        switch (M - m) {  // tiles measured on the 2-core EPYC (wider ones stream worse)
            case 5: strip<2, 5>(xm, w, om, N, K, nb, ne, n1); break;
            case 4: strip<2, 4>(xm, w, om, N, K, nb, ne, n1); break;
            case 3: strip<2, 3>(xm, w, om, N, K, nb, ne, n1); break;
            case 2: strip<3, 2>(xm, w, om, N, K, nb, ne, n1); break;
            case 1: strip<4, 1>(xm, w, om, N, K, nb, ne, n1); break;
        }
    }
}

extern "C" void rowdot_f32_threads(const float* x, const float* w, float* out, int M, int N, int K, int threads) {
    // each thread a contiguous share of the weight's rows, a multiple of 12 (every tile width
    // above divides it: the same tiles, so the same sums, bit for bit, on any thread count)
    const int per = ((N + threads - 1) / threads + 11) / 12 * 12;
    if (threads <= 1 || per >= N) {
        rowdot_f32(x, w, out, M, N, K, 0, N);
        return;
    }
    #pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int t = 0; t < threads; t++) {
        const int n0 = t * per, n1 = n0 + per < N ? n0 + per : N;
        if (n0 < n1) rowdot_f32(x, w, out, M, N, K, n0, n1);
    }
}

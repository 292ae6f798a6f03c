// SAB's read of its memory, one time step, forward and backward, for float and double on the CPU.
// Compiled on first use by methods/_sab_native.py (g++ -O3 -march=native) and called through ctypes;
// the same computation in PyTorch ops is methods/_sab_network.py's `choose_and_weigh` and
// `_AttentionStep.backward`, and the tests hold the two to each other and to autograd (float64).
//
// Why a compiled read: per step, eager PyTorch spends some thirty small operations on a read
// (scan, top-k, sparsify, gather, weighted sum, and the backward's closed form), each with its
// dispatch cost, and the MLP scorer's scan writes and reads a [B, |M|, H] workspace. Here the scan
// is one pass over the memory that keeps only each lane's scores, and everything after it touches
// only the k_top + 1 chosen rows.
//
// Memory layout (Memory in _sab_network.py): three buffers [capacity, B, row], row j * B + b of each
// holding memory j of lane b: values (row vrow >= H), cached keys (krow >= kw) and an extra cache
// (erow); the gradient store G has rows [d/d value (H); d/d key (kw)], laid out alike.
// Scorers (the cached key of each):
//   DOT  a_j = key_j . [q; 1]     (bilinear: key [W^T m; b . m], q = h^, kw = H + 1); the scan reads
//        b . m from extra (one float per row, packed: B of them per memory), so that a key row's
//        H floats fill whole cache lines and the (H+1)-th's line is not read
//   MLP  a_j = v . tanh(c_j / 2 + q)   (key c = 2 W_m m, extra E = exp(c), q = W_q h^ + b, kw = H)
//        = sum(v) - 2 sum_k v_k / (1 + E_jk Q_k) with Q = exp(2 q). With |2q| <= qmax (40 in
//        float, 300 in double), wherever tanh is not yet +-1 to rounding (|c + 2q| below about 40)
//        both factors are normal numbers and E Q is e^(c + 2q) to a few ulp; beyond, the product
//        may overflow to inf or underflow to 0 (or E be clamped), which still gives +-1. A lane
//        with a larger |2q| (or a NaN) is scored by tanh itself.
//   ADD  a_j = key_j + q          (separable: key = w_m . tanh(m), q = w_h . tanh(h^), kw = 1)
#include <cmath>
#include <cstdint>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif
#include <cstring>
#include <vector>

namespace {

enum Scorer : int64_t { DOT = 0, MLP = 1, ADD = 2 };

// exp and tanh that the compiler vectorises (glibc's scalar tanhf is called once per element).
// exp: x = n ln2 + r with |r| <= ln2 / 2, e^r by its Taylor polynomial (to order 6 in float, 13 in
// double: below one unit in the last place), 2^n from the exponent bits.
template <typename T> struct Bits;
template <> struct Bits<float> {
  using Int = int32_t;
  static constexpr int mantissa = 23, bias = 127;
  static constexpr float round = 12582912.0f, lo = -87.0f, hi = 88.0f;   // 1.5 * 2^23
  static constexpr float qmax = 40.0f;   // Q = e^(+-40) and, where it matters, E Q stay normal
};
template <> struct Bits<double> {
  using Int = int64_t;
  static constexpr int mantissa = 52, bias = 1023;
  static constexpr double round = 6755399441055744.0, lo = -708.0, hi = 709.0;   // 1.5 * 2^52
  static constexpr double qmax = 300.0;
};

template <typename T> inline T exp_(T x) {
  using B = Bits<T>;
  const bool nan = x != x;
  const T given = x;
  x = nan ? T(0) : x;   // converting NaN to an integer below would be undefined
  x = x < B::lo ? B::lo : x;
  x = x > B::hi ? B::hi : x;
  T n = (x * T(1.4426950408889634) + B::round) - B::round;   // round to nearest
  T r = x - n * T(0.693145751953125);                         // ln 2 in two parts (Cody-Waite)
  r = r - n * T(1.428606820309417232e-06);
  T p;
  if constexpr (sizeof(T) == 4) {
    p = T(1.0 / 720);
    for (T c : {T(1.0 / 120), T(1.0 / 24), T(1.0 / 6), T(0.5), T(1), T(1)}) p = p * r + c;
  } else {
    p = 1.0 / 6227020800;
    for (T c : {1.0 / 479001600, 1.0 / 39916800, 1.0 / 3628800, 1.0 / 362880, 1.0 / 40320, 1.0 / 5040,
                1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0})
      p = p * r + c;
  }
  typename B::Int bits = (typename B::Int(n) + B::bias) << B::mantissa;
  T scale;
  std::memcpy(&scale, &bits, sizeof(T));
  return nan ? given : p * scale;
}

// tanh(x) = (e^2x - 1) / (e^2x + 1): absolute error about one unit of 1.0 (what the scores need).
template <typename T> inline T tanh_(T x) {
  T e = exp_(T(2) * x);
  return (e - T(1)) / (e + T(1));
}

// a > b in torch.topk's order: NaN above every number, so a diverged score is chosen and seen.
template <typename T> inline bool above(T a, T b) { return a > b || (std::isnan(a) && !std::isnan(b)); }

// The scores of a DOT or (exact) MLP scorer for four rows of one lane at once (rows `stride`
// apart in the buffer read: keys for DOT, E for MLP), so that q, v and Q are loaded once for four.
template <typename T>
inline void score_four(const T* row, int64_t stride, int64_t kw, int64_t scorer, const T* qb, const T* v,
                       const T* Qb, T v_sum, const T* bias, int64_t bstride, T* out) {
  const T *k0 = row, *k1 = row + stride, *k2 = row + 2 * stride, *k3 = row + 3 * stride;
  T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  if (scorer == DOT) {
    const int64_t H = kw - 1;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t k = 0; k < H; ++k) {
      const T x = qb[k];
      s0 += k0[k] * x;
      s1 += k1[k] * x;
      s2 += k2[k] * x;
      s3 += k3[k] * x;
    }
    out[0] = s0 + bias[0], out[1] = s1 + bias[bstride], out[2] = s2 + bias[2 * bstride], out[3] = s3 + bias[3 * bstride];
  } else {
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t k = 0; k < kw; ++k) {
      const T x = Qb[k], u = v[k];
      s0 += u / (T(1) + k0[k] * x);
      s1 += u / (T(1) + k1[k] * x);
      s2 += u / (T(1) + k2[k] * x);
      s3 += u / (T(1) + k3[k] * x);
    }
    out[0] = v_sum - T(2) * s0, out[1] = v_sum - T(2) * s1, out[2] = v_sum - T(2) * s2, out[3] = v_sum - T(2) * s3;
  }
}

// The same for one row.
template <typename T>
inline T score_one(const T* row, int64_t kw, int64_t scorer, const T* qb, const T* v, const T* Qb, T v_sum,
                   const T* bias) {
  T s = 0;
  if (scorer == DOT) {
#pragma omp simd reduction(+ : s)
    for (int64_t k = 0; k < kw - 1; ++k) s += row[k] * qb[k];
    return s + bias[0];
  }
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < kw; ++k) s += v[k] / (T(1) + row[k] * Qb[k]);
  return v_sum - T(2) * s;
}

// Scores [B, M] of every memory, memories in blocks of four (outer) and lane by lane (inner): the
// pass follows the buffer's order, which the processor's prefetching follows (lane by lane alone,
// rows lie B * row apart). MLP: Q [B, H] = exp(2 q), and `exact[b]` whether lane b may use it.
template <typename T>
void score_all(const T* keys, int64_t krow, const T* extra, int64_t erow, int64_t B, int64_t M, int64_t kw,
               int64_t scorer, const T* q, const T* v, const T* Q, const char* exact, T* out) {
  T v_sum = 0;
  if (scorer == MLP)
    for (int64_t k = 0; k < kw; ++k) v_sum += v[k];
  for (int64_t j = 0; j < M;) {
    const int64_t block = M - j >= 4 ? 4 : 1;
    for (int64_t b = 0; b < B; ++b) {
      const T* key = keys + (j * B + b) * krow;
      T* o = out + b * M + j;
      if (scorer == ADD) {
        for (int64_t r = 0; r < block; ++r) o[r] = key[r * B * krow] + q[b];
      } else if (scorer == MLP && !exact[b]) {
        const T* qb = q + b * kw;
        for (int64_t r = 0; r < block; ++r) {
          const T* kr = key + r * B * krow;
          T acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int64_t k = 0; k < kw; ++k) acc += v[k] * tanh_(T(0.5) * kr[k] + qb[k]);
          o[r] = acc;
        }
      } else {
        const bool dot = scorer == DOT;
        const T* cache = extra + (j * B + b) * erow;   // DOT: b . m; MLP: E
        const T* row = dot ? key : cache;
        const int64_t stride = B * (dot ? krow : erow);
        const T* qb = q + b * (dot ? kw - 1 : kw);
        if (block == 4)
          score_four(row, stride, kw, scorer, qb, v, Q + b * kw, v_sum, cache, B * erow, o);
        else
          o[0] = score_one(row, kw, scorer, qb, v, Q + b * kw, v_sum, cache);
      }
    }
    j += block;
  }
}

// The n largest of scores[0..M) in descending order (ties: the lower index first).
template <typename T> void top(const T* scores, int64_t M, int64_t n, T* a, int64_t* idx) {
  int64_t filled = 0;
  for (int64_t j = 0; j < M; ++j) {
    T s = scores[j];
    if (filled == n && !above(s, a[n - 1])) continue;
    int64_t i = filled < n ? filled++ : n - 1;
    for (; i > 0 && above(s, a[i - 1]); --i) {
      a[i] = a[i - 1];
      idx[i] = idx[i - 1];
    }
    a[i] = s;
    idx[i] = j;
  }
}

template <typename T>
int read(const T* vals, int64_t vrow, const T* keys, int64_t krow, const T* extra, int64_t erow, int64_t B,
         int64_t M, int64_t H, int64_t kw, int64_t scorer, const T* q, const T* v, const T* h_hat, int64_t n,
         int64_t released, double floor, int64_t* flat, T* a, T* w, T* wf, T* moz, T* m, T* z,
         T* out, T* r) {
  if (n > M || n < 1) return 1;
  static thread_local std::vector<T> scores, Q;
  static thread_local std::vector<int64_t> chosen;
  chosen.resize(B * n);
  static thread_local std::vector<char> exact;
  scores.resize(B * M);
  if (scorer == MLP) {
    Q.resize(B * kw);
    exact.assign(B, 1);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t k = 0; k < kw; ++k) {
        T x = T(2) * q[b * kw + k];
        if (!(std::fabs(x) <= Bits<T>::qmax)) exact[b] = 0;   // NaN too: tanh propagates it
      }
      if (exact[b])
        for (int64_t k = 0; k < kw; ++k) Q[b * kw + k] = exp_(T(2) * q[b * kw + k]);
    }
  }
#if defined(__SSE__)
  // subnormal terms (v / (1 + E Q) below 1e-38 where E Q is huge) cost a hundred cycles each and
  // add less than H * 1e-38 to a score: flushed to zero for the scan only
  const unsigned int csr = _mm_getcsr();
  _mm_setcsr(csr | 0x8040);   // flush-to-zero and denormals-are-zero
#endif
  score_all(keys, krow, extra, erow, B, M, kw, scorer, q, v, Q.data(), exact.data(), scores.data());
#if defined(__SSE__)
  _mm_setcsr(csr);
#endif
  const int64_t q_width = scorer == ADD ? 1 : (scorer == DOT ? H : kw);
  for (int64_t b = 0; b < B; ++b) {
    const T* qb = q + b * q_width;
    T* ab = a + b * n;
    int64_t* ib = chosen.data() + b * n;
    top(scores.data() + b * M, M, n, ab, ib);
    // sparsify: w = relu(a - threshold) / Z (Sparsifier.forward, the long forms)
    T* wb = w + b * n;
    T s = 0;
    const T threshold = released ? ab[n - 1] + T(1e-7) : ab[n - 1];
    for (int64_t i = 0; i < n; ++i) {
      T d = ab[i] - threshold;
      wb[i] = d < T(0) ? T(0) : d;   // NaN stays NaN (as clamp_min)
      s += wb[i];
    }
    const bool floored = !released && s < T(floor);
    const T Z = released ? s + T(1e-7) : (floored ? T(floor) : s);
    for (int64_t i = 0; i < n; ++i) {
      wb[i] = wb[i] / Z;
      wf[b * n + i] = floored ? T(0) : wb[i];
      moz[b * n + i] = (wb[i] > T(0) ? T(1) : (wb[i] == T(0) ? T(0) : wb[i])) / Z;   // sign(w) / Z
    }
    // gather the chosen values (and the MLP's tanh of them), and h = h^ + sum_i w_i m_i
    T* outb = out + b * H;
    std::memcpy(outb, h_hat + b * H, H * sizeof(T));
    if (r) std::memset(r + b * H, 0, H * sizeof(T));
    for (int64_t i = 0; i < n; ++i) {
      flat[b * n + i] = ib[i] * B + b;
      const int64_t row = ib[i] * B + b;
      T* mi = m + (b * n + i) * H;
      std::memcpy(mi, vals + row * vrow, H * sizeof(T));
      if (scorer == MLP && exact[b]) {   // the chosen rows' tanh, as the scan evaluated it
        T* zi = z + (b * n + i) * H;
        const T *E = extra + row * erow, *Qb = Q.data() + b * kw;
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) zi[k] = T(1) - T(2) / (T(1) + E[k] * Qb[k]);
      } else if (scorer == MLP) {
        T* zi = z + (b * n + i) * H;
        const T* c = keys + row * krow;
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) zi[k] = tanh_(T(0.5) * c[k] + qb[k]);
      }
      const T wi = wb[i];
      T* rb = r ? r + b * H : outb;
#pragma omp simd
      for (int64_t k = 0; k < H; ++k) rb[k] += wi * mi[k];
    }
    if (r)
      for (int64_t k = 0; k < H; ++k) outb[k] += r[b * H + k];
  }
  return 0;
}

// The closed-form gradient of one read: given g = dL/d(read-out) [B, H], adds each chosen row's
// gradient [d/d value; d/d key] into the memory's gradient store G, and writes g_q and g_v: DOT,
// d/d h^ [B, H] = sum_i g_a_i W^T m_i, read from the chosen rows' cached keys [W^T m; b . m] (keys,
// krow); MLP, d/d q [B, H] and d/d v [H]; ADD, d/d q [B].
template <typename T>
int read_backward(const T* g, int64_t B, int64_t n, int64_t H, int64_t width, int64_t kw, int64_t scorer,
                  int64_t threshold_grad, const T* w, const T* wf, const T* moz, const T* m, const T* q,
                  const T* z, const T* v, const int64_t* flat, const T* keys, int64_t krow, T* G, T* g_q,
                  T* g_v) {
  std::vector<T> g_a(n);
  if (scorer == MLP) std::memset(g_v, 0, H * sizeof(T));
  const int64_t q_width = scorer == ADD ? 1 : (scorer == DOT ? H : kw);
  std::memset(g_q, 0, B * q_width * sizeof(T));
  for (int64_t b = 0; b < B; ++b) {
    const T* gb = g + b * H;
    // d/d w_i = m_i . g; through the normaliser and the relu; the threshold takes minus the sum
    T through = 0;
    for (int64_t i = 0; i < n; ++i) {
      const T* mi = m + (b * n + i) * H;
      T d = 0;
#pragma omp simd reduction(+ : d)
      for (int64_t k = 0; k < H; ++k) d += mi[k] * gb[k];
      g_a[i] = d;
      through += d * wf[b * n + i];
    }
    T total = 0;
    for (int64_t i = 0; i < n; ++i) {
      g_a[i] = (g_a[i] - through) * moz[b * n + i];
      total += g_a[i];
    }
    if (threshold_grad) g_a[n - 1] -= total;
    T* gqb = g_q + b * q_width;
    for (int64_t i = 0; i < n; ++i) {
      T* row = G + flat[b * n + i] * width;
      const T wi = w[b * n + i], ga = g_a[i];
#pragma omp simd
      for (int64_t k = 0; k < H; ++k) row[k] += wi * gb[k];
      T* key = row + H;
      if (scorer == DOT) {
        const T* qb = q + b * H;
        const T* Wm = keys + flat[b * n + i] * krow;   // W^T m_i
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) key[k] += ga * qb[k];
        key[H] += ga;
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) gqb[k] += ga * Wm[k];
      } else if (scorer == MLP) {
        const T* zi = z + (b * n + i) * H;
#pragma omp simd
        for (int64_t k = 0; k < H; ++k) {
          T pre = ga * v[k] * (T(1) - zi[k] * zi[k]);
          key[k] += pre;
          gqb[k] += pre;
          g_v[k] += ga * zi[k];
        }
      } else {
        key[0] += ga;
        gqb[0] += ga;
      }
    }
  }
  return 0;
}

}  // namespace

extern "C" {
#define SAB_READ(T, suffix)                                                                                      \
  int sab_read_##suffix(const T* vals, int64_t vrow, const T* keys, int64_t krow, const T* extra, int64_t erow,  \
                        int64_t B, int64_t M, int64_t H, int64_t kw, int64_t scorer, const T* q, const T* v,     \
                        const T* h_hat, int64_t n, int64_t released, double floor, int64_t* flat,                 \
                        T* a, T* w, T* wf, T* moz, T* m, T* z, T* out, T* r) {                                    \
    return read<T>(vals, vrow, keys, krow, extra, erow, B, M, H, kw, scorer, q, v, h_hat, n, released, floor,      \
                   flat, a, w, wf, moz, m, z, out, r);                                                            \
  }                                                                                                               \
  int sab_read_backward_##suffix(const T* g, int64_t B, int64_t n, int64_t H, int64_t width, int64_t kw,         \
                                 int64_t scorer, int64_t threshold_grad, const T* w, const T* wf, const T* moz,   \
                                 const T* m, const T* q, const T* z, const T* v, const int64_t* flat,             \
                                 const T* keys, int64_t krow, T* G, T* g_q, T* g_v) {                             \
    return read_backward<T>(g, B, n, H, width, kw, scorer, threshold_grad, w, wf, moz, m, q, z, v, flat, keys,    \
                            krow, G, g_q, g_v);                                                                   \
  }
SAB_READ(float, f)
SAB_READ(double, d)
#undef SAB_READ
}

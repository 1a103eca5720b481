// Fused forward + backward + plain-SGD step for exactly the seed network (conv5x5 1->4, pool,
// conv5x5 4->12, pool, fc 192->10), one image at a time, 16-float vectors (GCC vector extensions:
// AVX-512 where the CPU has it, pairs of AVX2 registers otherwise).
//
// Why this layout: both max-pools are 2x2/2, so each conv is computed per pool phase (dy, dx).
// Pooling then is an element-wise max of four vectors, and conv2's 4x4 pooled output per channel
// is exactly one 16-lane vector. conv1 reads four parity-split copies of the image (14x14 each,
// row width 14: 12 vectors per phase); conv2 reads 144 "windows" (4x4 stride-2 samples of the
// pooled conv1 map). A batch is cut into 4 fixed shards whose gradients are summed in a fixed order,
// so the result is bit-identical for a given input whatever the thread count (see Job below).
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstddef>
#include <cstring>
#include <new>
#include <sched.h>
#include <thread>
#include <vector>

namespace {

typedef float vf __attribute__((vector_size(64)));
typedef float vfu __attribute__((vector_size(64), aligned(4)));
typedef int vi __attribute__((vector_size(64)));
constexpr int L = 16;        // lanes per vector
constexpr int PW = 14;       // row width of a parity-split image and of conv1's per-phase output
constexpr int PSZ = 224;     // floats per parity-split image: 14*14 + pad for vector over-reads (max 191 + 30)
constexpr int C1V = 12;      // vectors per conv1 phase output (12 rows x 14 = 168 lanes, 144 valid; 3 blocks of 4)
constexpr int NPARAM = 3246;
constexpr int NSHARD = 4;    // a batch is always cut into 4 shards: results do not depend on threads
constexpr int OW1 = 0, OB1 = 100, OW2 = 104, OB2 = 1304, OWF = 1316, OBF = 3236;  // flat offsets

inline vf load(const float* p) { return *reinterpret_cast<const vfu*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vfu*>(p) = v; }
inline vf splat(float s) { return vf{} + s; }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }

inline float hsum(vf v) {  // fixed pairwise order
  float s[L];
  memcpy(s, &v, sizeof s);
  for (int w = L / 2; w > 0; w /= 2)
    for (int i = 0; i < w; i++) s[i] += s[i + w];
  return s[0];
}

// max over the four pool phases, and which phase won: the first max, as PyTorch; -1 where the max is not
// positive (after the ReLU the gradient is zero there)
inline vf pool4(const vf a[4], vf& phase) {
  vf m = vmax(vmax(a[0], a[1]), vmax(a[2], a[3]));
  vf p = splat(3.0f);
  p = a[2] == m ? splat(2.0f) : p;
  p = a[1] == m ? splat(1.0f) : p;
  p = a[0] == m ? splat(0.0f) : p;
  vi pos = m > 0.0f;
  phase = pos ? p : splat(-1.0f);
  return pos ? m : splat(0.0f);
}

struct alignas(64) Grad {  // one shard's gradient accumulators, lanes summed at the end
  vf w1[4][25], b1[4], w2[12][100], b2[12], wfc[10][12];
  float bfc[10];
  double loss;
};

struct alignas(64) Work {  // one image's activations, small enough for L1; buffers that are dead by
                           // the time their partner is written share memory
  float ph[4][PSZ];        // parity-split input: ph[a*2+b][r*14+c] = x[2r+a][2c+b]
  vf m1[4][C1V];           // winning pool phase of conv1 (-1: none), row width 14
  union { float p1[4][C1V * L]; float dp1[4][C1V * L]; };  // pooled conv1 and its gradient, row width 14
  float s[4][12][2][8];    // pooled conv1 split by column parity: [ic][r][b][c] = p1[ic][r][2c+b]
  union { vf win[4][6][6]; vf dwin[4][6][6]; };  // win[ic][sy][sx] lane qy*4+qx = p1[ic][sy+2qy][sx+2qx]
  vf m2[12], p2[12], d2[12][4];
};

// x (28 x 28) -> four 14 x 14 images by row and column parity. Each store writes 16 lanes; the two
// beyond a row are overwritten by the next row (the last ones land in the pad: finite, never used).
void split_image(const float* x, Work& w) {
  const vi even = {0, 2, 4, 6, 8, 10, 12, 14, 20, 22, 24, 26, 28, 30, 0, 0};
  const vi odd = {1, 3, 5, 7, 9, 11, 13, 15, 21, 23, 25, 27, 29, 31, 0, 0};
  for (int row = 0; row < 28; row++) {
    vf lo = load(x + row * 28), hi = load(x + row * 28 + 12);  // columns 0..15 and 12..27
    float* dst = w.ph[(row & 1) * 2] + (row >> 1) * PW;
    store(dst, __builtin_shuffle(lo, hi, even));
    store(dst + PSZ, __builtin_shuffle(lo, hi, odd));
  }
}

inline const float* tap1(const Work& w, int sy, int sx, int v) {
  return w.ph[(sy & 1) * 2 + (sx & 1)] + (sy >> 1) * PW + (sx >> 1) + v * L;
}

// where tap (ky, kx) of pool phase (dy, dx) starts, in the parity-split images: [dy*2+dx][ky*5+kx]
struct Taps1 {
  int off[4][25];
  Taps1() {
    for (int p = 0; p < 4; p++)
      for (int t = 0; t < 25; t++) {
        int sy = p / 2 + t / 5, sx = p % 2 + t % 5;
        off[p][t] = ((sy & 1) * 2 + (sx & 1)) * PSZ + (sy >> 1) * PW + (sx >> 1);
      }
  }
};
const Taps1 kTaps1;

// conv1 for one pool phase and vectors [v0, v0 + 4) of it, all four channels. One small loop body for
// every phase and block: a fully unrolled conv1 overflows the instruction cache.
inline void conv1_block(const float* P, int phase, int v0, const Work& w, vf out[4][4]) {
  const float* in0 = &w.ph[0][0] + v0 * L;
  const int* off = kTaps1.off[phase];
  vf acc[4][4];
  for (int oc = 0; oc < 4; oc++)
    for (int v = 0; v < 4; v++) acc[oc][v] = splat(P[OB1 + oc]);
#pragma GCC unroll 5
  for (int t = 0; t < 25; t++) {
    vf in[4];
    for (int v = 0; v < 4; v++) in[v] = load(in0 + off[t] + v * L);
    for (int oc = 0; oc < 4; oc++) {
      vf wt = splat(P[OW1 + oc * 25 + t]);
      for (int v = 0; v < 4; v++) acc[oc][v] += wt * in[v];
    }
  }
  for (int oc = 0; oc < 4; oc++)
    for (int v = 0; v < 4; v++) out[oc][v] = acc[oc][v];
}

void conv1_pool(const float* P, Work& w) {
  for (int v0 = 0; v0 < C1V; v0 += 4) {
    vf c1[4][4][4];  // [phase][oc][vector]
    for (int phase = 0; phase < 4; phase++) conv1_block(P, phase, v0, w, c1[phase]);
    for (int oc = 0; oc < 4; oc++)
      for (int v = 0; v < 4; v++) {
        vf a[4] = {c1[0][oc][v], c1[1][oc][v], c1[2][oc][v], c1[3][oc][v]};
        store(w.p1[oc] + (v0 + v) * L, pool4(a, w.m1[oc][v0 + v]));
      }
  }
}

const vi kDeinterleave = {0, 2, 4, 6, 8, 10, 0, 0, 1, 3, 5, 7, 9, 11, 0, 0};  // a row -> evens | odds

void make_windows(Work& w) {
  for (int ic = 0; ic < 4; ic++)
    for (int r = 0; r < 12; r++) store(&w.s[ic][r][0][0], __builtin_shuffle(load(w.p1[ic] + r * PW), kDeinterleave));
  for (int ic = 0; ic < 4; ic++)
    for (int sy = 0; sy < 6; sy++)
      for (int sx = 0; sx < 6; sx++) {
        float* dst = reinterpret_cast<float*>(&w.win[ic][sy][sx]);
        for (int qy = 0; qy < 4; qy++) memcpy(dst + qy * 4, &w.s[ic][sy + 2 * qy][sx & 1][sx >> 1], 16);
      }
}

// conv2 for one pool phase, all 12 channels; w2t is conv2's weight as [ic*25 + ky*5 + kx][oc]
template <int DY, int DX>
inline void conv2_phase(const float* P, const float* w2t, const Work& w, vf acc[12]) {
  for (int o = 0; o < 12; o++) acc[o] = splat(P[OB2 + o]);
  for (int ic = 0; ic < 4; ic++) {
    const vf* win = &w.win[ic][0][0];
    const float* wk = w2t + ic * 25 * 12;
#pragma GCC unroll 25
    for (int t = 0; t < 25; t++) {
      const int ky = t / 5, kx = t % 5;
      vf in = win[(ky + DY) * 6 + kx + DX];
      for (int o = 0; o < 12; o++) acc[o] += wk[t * 12 + o] * in;
    }
  }
}

void conv2_pool(const float* P, const float* w2t, Work& w) {
  vf a[4][12];
  conv2_phase<0, 0>(P, w2t, w, a[0]);
  conv2_phase<0, 1>(P, w2t, w, a[1]);
  conv2_phase<1, 0>(P, w2t, w, a[2]);
  conv2_phase<1, 1>(P, w2t, w, a[3]);
  for (int o = 0; o < 12; o++) {
    vf ph[4] = {a[0][o], a[1][o], a[2][o], a[3][o]};
    w.p2[o] = pool4(ph, w.m2[o]);
  }
}

// fc, softmax cross-entropy and the fc gradients; returns the image's loss, leaves dL/dconv2 in w.d2.
// With label smoothing `smooth` the target is (1 - smooth) one-hot + smooth / 10, as PyTorch's.
float head(const float* P, int label, float inv_batch, float smooth, Work& w, Grad& g) {
  const float* wf = P + OWF;
  float logits[10], mx = -INFINITY;
  for (int c = 0; c < 10; c++) {
    vf a = vf{};
    for (int oc = 0; oc < 12; oc++) a += load(wf + c * 192 + oc * L) * w.p2[oc];
    logits[c] = P[OBF + c] + hsum(a);
    mx = logits[c] > mx ? logits[c] : mx;
  }
  float e[10], sum = 0;
  for (int c = 0; c < 10; c++) sum += e[c] = expf(logits[c] - mx);
  const float lse = mx + logf(sum);
  float loss = lse - logits[label];
  float target[10];
  for (int c = 0; c < 10; c++) target[c] = (c == label ? 1.0f : 0.0f);
  if (smooth > 0.0f) {
    float mean_nll = 0.0f;
    for (int c = 0; c < 10; c++) {
      mean_nll += lse - logits[c];
      target[c] = target[c] * (1.0f - smooth) + smooth / 10.0f;
    }
    loss = (1.0f - smooth) * loss + smooth * mean_nll / 10.0f;
  }
  vf dp2[12] = {};
  for (int c = 0; c < 10; c++) {
    float dl = (e[c] / sum - target[c]) * inv_batch;
    g.bfc[c] += dl;
    for (int oc = 0; oc < 12; oc++) {
      g.wfc[c][oc] += dl * w.p2[oc];
      dp2[oc] += dl * load(wf + c * 192 + oc * L);
    }
  }
  for (int oc = 0; oc < 12; oc++) {
    vf db = vf{};
    for (int p = 0; p < 4; p++) db += w.d2[oc][p] = w.m2[oc] == static_cast<float>(p) ? dp2[oc] : vf{};
    g.b2[oc] += db;
  }
  return loss;
}

// the input gradient of conv2 for one pool phase, added into the window gradients
template <int DY, int DX>
inline void conv2_dgrad_phase(const float* w2t, Work& w) {
  vf d[12];
  for (int o = 0; o < 12; o++) d[o] = w.d2[o][DY * 2 + DX];
  for (int ic = 0; ic < 4; ic++) {
    vf* dwin = &w.dwin[ic][0][0];
    const float* wk = w2t + ic * 25 * 12;
#pragma GCC unroll 25
    for (int t = 0; t < 25; t++) {
      const int ky = t / 5, kx = t % 5;
      vf a = wk[t * 12] * d[0], b = wk[t * 12 + 1] * d[1];
      for (int o = 2; o < 12; o += 2) {
        a += wk[t * 12 + o] * d[o];
        b += wk[t * 12 + o + 1] * d[o + 1];
      }
      dwin[(ky + DY) * 6 + kx + DX] += a + b;
    }
  }
}

void conv2_wgrad(Work& w, Grad& g) {
  for (int ob = 0; ob < 12; ob += 6) {  // weight gradient: correlate windows with the output gradient
    vf d[6][4];
    for (int o = 0; o < 6; o++)
      for (int p = 0; p < 4; p++) d[o][p] = w.d2[ob + o][p];
    for (int ic = 0; ic < 4; ic++)
      for (int ky = 0; ky < 5; ky++)
        for (int kx = 0; kx < 5; kx++) {
          vf in[4] = {w.win[ic][ky][kx], w.win[ic][ky][kx + 1], w.win[ic][ky + 1][kx], w.win[ic][ky + 1][kx + 1]};
          for (int o = 0; o < 6; o++) {
            vf& a = g.w2[ob + o][ic * 25 + ky * 5 + kx];
            a += d[o][0] * in[0] + d[o][1] * in[1] + d[o][2] * in[2] + d[o][3] * in[3];
          }
        }
  }
}

void conv2_dgrad(const float* w2t, Work& w) {
  memset(w.dwin, 0, sizeof w.dwin);
  conv2_dgrad_phase<0, 0>(w2t, w);
  conv2_dgrad_phase<0, 1>(w2t, w);
  conv2_dgrad_phase<1, 0>(w2t, w);
  conv2_dgrad_phase<1, 1>(w2t, w);
}

// lane j of window row qy of a window at column sx -> lane of a pooled-map row (width 14, 16 lanes, 16 = zero)
struct ScatterIndex {
  vi idx[4][6];
  ScatterIndex() {
    for (int qy = 0; qy < 4; qy++)
      for (int sx = 0; sx < 6; sx++)
        for (int j = 0; j < L; j++) {
          int qx = (j >> 1) - (sx >> 1);
          bool hit = j < 12 && (j & 1) == (sx & 1) && qx >= 0 && qx < 4;
          idx[qy][sx][j] = hit ? qy * 4 + qx : L;
        }
  }
};
const ScatterIndex kScatter;

// the adjoint of make_windows: each row of the pooled map's gradient sums the window rows that read it,
// permuted into place in registers (rows in order: each store's last 2 lanes are the next row's first)
void scatter_windows(Work& w) {
  const vf zero = {};
  for (int ic = 0; ic < 4; ic++) {
    for (int r = 0; r < 12; r++) {
      vf row = zero;
      for (int sy = r & 1; sy <= r && sy < 6; sy += 2) {
        int qy = (r - sy) >> 1;
        if (qy > 3) continue;
        for (int sx = 0; sx < 6; sx++) row += __builtin_shuffle(w.dwin[ic][sy][sx], zero, kScatter.idx[qy][sx]);
      }
      store(w.dp1[ic] + r * PW, row);
    }
    memset(w.dp1[ic] + 12 * PW, 0, (C1V * L - 12 * PW) * sizeof(float));  // lanes past row 11
  }
}

void conv1_backward(Work& w, Grad& g) {
  vf d[4][4][C1V];  // [oc][phase][vector]
  for (int oc = 0; oc < 4; oc++) {
    vf db = vf{};
    for (int p = 0; p < 4; p++)
      for (int v = 0; v < C1V; v++)
        db += d[oc][p][v] = w.m1[oc][v] == static_cast<float>(p) ? load(w.dp1[oc] + v * L) : vf{};
    g.b1[oc] += db;
  }
  for (int ky = 0; ky < 5; ky++) {
    vf acc[5][4];
    for (int kx = 0; kx < 5; kx++)
      for (int oc = 0; oc < 4; oc++) acc[kx][oc] = g.w1[oc][ky * 5 + kx];
    for (int v = 0; v < C1V; v++)
      for (int dy = 0; dy < 2; dy++)
        for (int dx = 0; dx < 2; dx++)
#pragma GCC unroll 5
          for (int kx = 0; kx < 5; kx++) {
            vf in = load(tap1(w, ky + dy, kx + dx, v));
            for (int oc = 0; oc < 4; oc++) acc[kx][oc] += d[oc][dy * 2 + dx][v] * in;
          }
    for (int kx = 0; kx < 5; kx++)
      for (int oc = 0; oc < 4; oc++) g.w1[oc][ky * 5 + kx] = acc[kx][oc];
  }
}

// one shard of one step: forward and backward of images idx[0..n), gradients summed into g (per lane).
// Gives up (returns false) as soon as `state` leaves `open`: another thread has published this shard.
bool shard_grad(const float* P, const float* w2t, const float* x, const int64_t* y, const int64_t* idx, int n,
                float inv_batch, float smooth, Work& w, Grad& g, const std::atomic<int64_t>& state,
                int64_t open) {
  memset(&g, 0, sizeof g);
  for (int i = 0; i < n; i++) {
    if (state.load(std::memory_order_relaxed) != open) return false;
    split_image(x + idx[i] * 784, w);
    conv1_pool(P, w);
    make_windows(w);
    conv2_pool(P, w2t, w);
    g.loss += head(P, static_cast<int>(y[idx[i]]), inv_batch, smooth, w, g);
    conv2_wgrad(w, g);
    conv2_dgrad(w2t, w);
    scatter_windows(w);
    conv1_backward(w, g);
  }
  return true;
}

constexpr int kGradVectors = offsetof(Grad, bfc) / sizeof(vf);

void add_into(Grad& into, const Grad& g) {
  vf* a = &into.w1[0][0];
  const vf* b = &g.w1[0][0];
  for (int i = 0; i < kGradVectors; i++) a[i] += b[i];
  for (int c = 0; c < 10; c++) into.bfc[c] += g.bfc[c];
}

void fold(const Grad& g, float* out) {  // lanes summed: the flat gradient in PyTorch's parameter order
  for (int oc = 0; oc < 4; oc++) {
    for (int k = 0; k < 25; k++) out[OW1 + oc * 25 + k] = hsum(g.w1[oc][k]);
    out[OB1 + oc] = hsum(g.b1[oc]);
  }
  for (int oc = 0; oc < 12; oc++) {
    for (int k = 0; k < 100; k++) out[OW2 + oc * 100 + k] = hsum(g.w2[oc][k]);
    out[OB2 + oc] = hsum(g.b2[oc]);
  }
  for (int c = 0; c < 10; c++) {
    memcpy(out + OWF + c * 192, g.wfc[c], 192 * sizeof(float));
    out[OBF + c] = g.bfc[c];
  }
}

// forward only: the logits of images [lo, hi) of x into out (10 per image)
void logits_range(const float* P, const float* x, int64_t lo, int64_t hi, float* out) {
  Work* w = new Work();
  float w2t[100 * 12];
  for (int o = 0; o < 12; o++)
    for (int k = 0; k < 100; k++) w2t[k * 12 + o] = P[OW2 + o * 100 + k];
  for (int64_t i = lo; i < hi; i++) {
    split_image(x + i * 784, *w);
    conv1_pool(P, *w);
    make_windows(*w);
    conv2_pool(P, w2t, *w);
    for (int c = 0; c < 10; c++) {
      vf a = vf{};
      for (int oc = 0; oc < 12; oc++) a += load(P + OWF + c * 192 + oc * L) * w->p2[oc];
      out[i * 10 + c] = P[OBF + c] + hsum(a);
    }
  }
  delete w;
}

void pause_or_yield(int spins) {  // spin briefly, then yield: a busy machine must not stall on a peer
  if (spins < 2000) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  } else {
    sched_yield();
  }
}

constexpr int kMaxThreads = NSHARD;

// Scheduling. Threads claim the 4 shards of the current step first come, first served; a thread with
// nothing left to claim computes a shard that another thread still holds, and the first to finish
// publishes it (a compare-and-swap on the shard's state). Every copy of a shard is bit-identical, so who
// wins never changes the result, and a thread the OS deschedules under load never stalls the others.
// The thread publishing the last shard sums the winners in shard order and takes the SGD step.
// States are tagged with the step (step * 16 + owner + 1, owner 0: open), so late work never counts.
// A late thread may still read P while it is updated; its result is then always discarded.
struct Job {
  const float* x;
  const int64_t* y;
  const int64_t* batches;
  int64_t steps, batch;
  float lr, smooth, total;
  float* grad_out;  // set: write the step's gradient here instead of taking the SGD step
  int threads;
  alignas(64) float P[NPARAM];
  alignas(64) float w2t[100 * 12];  // conv2's weight as [ic*25 + ky*5 + kx][oc], for broadcasts in order
  alignas(64) float grad[NPARAM];
  Grad* bufs[kMaxThreads][NSHARD];  // each thread's copy of each shard's gradient
  std::atomic<int64_t> state[NSHARD];
  std::atomic<int64_t> claims{0};  // step * 16 + shards claimed
  std::atomic<int> published{0};
  std::atomic<int64_t> step{0};

  void transpose_w2() {
    for (int o = 0; o < 12; o++)
      for (int k = 0; k < 100; k++) w2t[k * 12 + o] = P[OW2 + o * 100 + k];
  }
};

const int kSizes[6] = {100, 4, 1200, 12, 1920, 10};

void step_end(Job& job, int64_t k) {
  Grad* winner[NSHARD];
  double loss = 0;
  for (int s = 0; s < NSHARD; s++) {
    winner[s] = job.bufs[job.state[s].load(std::memory_order_acquire) % 16 - 1][s];
    loss += winner[s]->loss;
  }
  job.total += static_cast<float>(loss / static_cast<double>(job.batch));
  for (int s = 1; s < NSHARD; s++) add_into(*winner[0], *winner[s]);
  fold(*winner[0], job.grad);
  if (job.grad_out != nullptr)
    memcpy(job.grad_out, job.grad, sizeof job.grad);
  else
    for (int i = 0; i < NPARAM; i++) job.P[i] -= job.lr * job.grad[i];  // plain SGD
  job.transpose_w2();
  job.published.store(0, std::memory_order_relaxed);
  for (int s = 0; s < NSHARD; s++) job.state[s].store((k + 1) * 16, std::memory_order_relaxed);
  job.claims.store((k + 1) * 16, std::memory_order_relaxed);
  job.step.store(k + 1, std::memory_order_release);
}

int claim(Job& job, int64_t k) {  // a fresh shard of step k, or -1
  int64_t c = job.claims.load(std::memory_order_relaxed);
  while (c / 16 == k && c % 16 < NSHARD)
    if (job.claims.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel)) return static_cast<int>(c % 16);
  return -1;
}

int unpublished(Job& job, int64_t k, int after) {  // a shard of step k nobody has published yet, or -1
  for (int i = 1; i <= NSHARD; i++) {
    int s = (after + i) % NSHARD;
    if (job.state[s].load(std::memory_order_acquire) == k * 16) return s;
  }
  return -1;
}

void run_thread(Job& job, int t) {
  Work* w = new Work();
  const float inv_batch = 1.0f / static_cast<float>(job.batch);
  int last = t, spins = 0;
  for (int64_t k; (k = job.step.load(std::memory_order_acquire)) < job.steps;) {
    int s = claim(job, k);
    if (s < 0) s = unpublished(job, k, last);
    if (s < 0) {  // all published: the last publisher is taking the step
      pause_or_yield(spins++);
      continue;
    }
    spins = 0;
    last = s;
    int64_t lo = job.batch * s / NSHARD, hi = job.batch * (s + 1) / NSHARD;
    const int64_t* idx = job.batches + k * job.batch + lo;
    Grad& g = *job.bufs[t][s];
    if (!shard_grad(job.P, job.w2t, job.x, job.y, idx, static_cast<int>(hi - lo), inv_batch, job.smooth, *w, g,
                    job.state[s], k * 16))
      continue;
    int64_t open = k * 16;
    if (job.state[s].compare_exchange_strong(open, k * 16 + t + 1, std::memory_order_acq_rel) &&
        job.published.fetch_add(1, std::memory_order_acq_rel) + 1 == NSHARD)
      step_end(job, k);
  }
  delete w;
}

// Runs `steps` steps of batch `batch` on the threads; with grad_out, one step's gradient instead of SGD.
float run_job(float** params, const float* x, const int64_t* y, const int64_t* batches, int64_t steps,
              int64_t batch, float lr, float smooth, float* grad_out, int threads) {
  Job* job = new Job();
  for (int i = 0, off = 0; i < 6; off += kSizes[i], i++) {
    memcpy(job->P + off, params[i], kSizes[i] * sizeof(float));
  }
  job->x = x;
  job->y = y;
  job->batches = batches;
  job->steps = steps;
  job->batch = batch;
  job->lr = lr;
  job->smooth = smooth;
  job->grad_out = grad_out;
  job->threads = threads < 1 ? 1 : (threads > kMaxThreads ? kMaxThreads : threads);
  job->total = 0.0f;
  job->transpose_w2();
  for (int t = 0; t < job->threads; t++)
    for (auto& g : job->bufs[t]) g = new Grad();
  for (auto& st : job->state) st.store(0);
  std::vector<std::thread> pool;
  for (int t = 1; t < job->threads; t++) pool.emplace_back(run_thread, std::ref(*job), t);
  run_thread(*job, 0);
  for (auto& th : pool) th.join();
  if (grad_out == nullptr)
    for (int i = 0, off = 0; i < 6; off += kSizes[i], i++) memcpy(params[i], job->P + off, kSizes[i] * sizeof(float));
  float total = job->total;
  for (int t = 0; t < job->threads; t++)
    for (auto& g : job->bufs[t]) delete g;
  delete job;
  return total;
}

}  // namespace

extern "C" {

int lenet_fast_version() { return 4; }

// The one network this kernel computes, as lenet.model.Shape spells it: image side, kernel side, conv1
// channels, conv2 channels, classes, pool side. The engine compares it with SHAPE and refuses a mismatch.
void lenet_fast_shape(int64_t* out) {
  const int64_t shape[6] = {28, 5, 4, 12, 10, 2};
  memcpy(out, shape, sizeof shape);
}

// k SGD steps of batch B (rows of `batches`, indices into x: (N, 784) float32, y: (N,) int64).
// params: the six parameter arrays in PyTorch order, updated in place. Returns the summed step losses.
float lenet_fast_train_steps(float** params, const float* x, const int64_t* y, const int64_t* batches,
                             int64_t steps, int64_t batch, float lr, int threads) {
  return run_job(params, x, y, batches, steps, batch, lr, 0.0f, nullptr, threads);
}

// The gradient of the mean (label-smoothed) cross-entropy over the batch x: (B, 784), y: (B,), into
// grad (3,246 floats, PyTorch's parameter order); params are only read. Returns the batch's mean loss.
float lenet_fast_gradient(float** params, const float* x, const int64_t* y, int64_t batch, float smooth,
                          float* grad, int threads) {
  std::vector<int64_t> idx(batch);
  for (int64_t i = 0; i < batch; i++) idx[i] = i;
  return run_job(params, x, y, idx.data(), 1, batch, 0.0f, smooth, grad, threads);
}

// the logits of n images (n x 784) into out (n x 10), images split evenly over the threads
void lenet_fast_logits(float** params, const float* x, int64_t n, float* out, int threads) {
  std::vector<float> P(NPARAM);
  for (int i = 0, off = 0; i < 6; off += kSizes[i], i++) memcpy(P.data() + off, params[i], kSizes[i] * sizeof(float));
  threads = threads < 1 ? 1 : (threads > 64 ? 64 : threads);
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; t++) pool.emplace_back(logits_range, P.data(), x, n * t / threads, n * (t + 1) / threads, out);
  logits_range(P.data(), x, 0, n / threads, out);
  for (auto& th : pool) th.join();
}

}  // extern "C"

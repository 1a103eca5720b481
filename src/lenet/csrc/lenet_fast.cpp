// Fused forward + backward + plain-SGD step for exactly the seed network (conv5x5 1->4, pool,
// conv5x5 4->12, pool, fc 192->10), one image at a time, 16-float vectors (GCC vector extensions:
// AVX-512 where the CPU has it, pairs of AVX2 registers otherwise).
//
// Why this layout: both max-pools are 2x2/2, so each conv is computed per pool phase (dy, dx).
// Pooling then is an element-wise max of four vectors, and conv2's 4x4 pooled output per channel
// is exactly one 16-lane vector. conv1 reads four parity-split copies of the image (14x14 each,
// row width 14: 11 vectors per phase); conv2 reads 144 "windows" (4x4 stride-2 samples of the
// pooled conv1 map). Gradients of a batch shard are summed in a fixed order, so the result is
// bit-identical for a given input whatever the thread count.
#include <atomic>
#include <cmath>
#include <cstdint>
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
constexpr int PSZ = 208;     // floats per parity-split image: 14*14 + zero pad for vector over-reads
constexpr int C1V = 11;      // vectors per conv1 phase output (12 rows x 14 = 168 lanes, 144 valid)
constexpr int NPARAM = 3246;
constexpr int NSHARD = 2;    // a batch is always cut into 2 shards: results do not depend on threads
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

// max over the four pool phases, with masks for the phase that won (first max, as PyTorch) and is > 0
inline vf pool4(const vf a[4], vf mask[4]) {
  vf m = vmax(vmax(a[0], a[1]), vmax(a[2], a[3]));
  vi pos = m > 0.0f;
  vi taken = vi{} ;
  for (int p = 0; p < 4; p++) {
    vi win = (a[p] == m) & ~taken;
    taken |= win;
    mask[p] = (win & pos) ? splat(1.0f) : splat(0.0f);
  }
  return pos ? m : splat(0.0f);
}

struct alignas(64) Grad {  // one shard's gradient accumulators, lanes summed at the end
  vf w1[4][25], b1[4], w2[12][100], b2[12], wfc[10][12];
  float bfc[10];
  double loss;
};

struct alignas(64) Work {  // one image's activations; everything stays in L1
  float ph[4][PSZ];        // parity-split input: ph[a*2+b][r*14+c] = x[2r+a][2c+b]
  vf m1[4][4][C1V];        // conv1 pool masks [oc][phase][vector]
  float p1[4][C1V * L];    // pooled conv1, row width 14
  float s[4][2][12][8];    // pooled conv1 split by column parity: s[ic][b][r][c] = p1[ic][r][2c+b]
  vf win[4][6][6];         // win[ic][sy][sx] lane qy*4+qx = p1[ic][sy+2qy][sx+2qx]
  vf m2[12][4], p2[12], d2[12][4], dwin[4][6][6];
  float ds[4][2][12][8];
  float dp1[4][C1V * L];
  Work() { memset(this, 0, sizeof *this); }
};

void split_image(const float* x, Work& w) {
  for (int a = 0; a < 2; a++)
    for (int r = 0; r < 14; r++) {
      const float* row = x + (2 * r + a) * 28;
      for (int b = 0; b < 2; b++)
        for (int c = 0; c < 14; c++) w.ph[a * 2 + b][r * PW + c] = row[2 * c + b];
    }
}

inline const float* tap1(const Work& w, int sy, int sx, int v) {
  return w.ph[(sy & 1) * 2 + (sx & 1)] + (sy >> 1) * PW + (sx >> 1) + v * L;
}

void conv1_pool(const float* P, Work& w) {
  const float* w1 = P + OW1;
  for (int v = 0; v < C1V; v++) {
    vf acc[4][4];
    for (int oc = 0; oc < 4; oc++)
      for (int p = 0; p < 4; p++) acc[oc][p] = splat(P[OB1 + oc]);
#pragma GCC unroll 6
    for (int sy = 0; sy < 6; sy++)
#pragma GCC unroll 6
      for (int sx = 0; sx < 6; sx++) {
        vf in = load(tap1(w, sy, sx, v));
        for (int dy = 0; dy < 2; dy++)
          for (int dx = 0; dx < 2; dx++) {
            int ky = sy - dy, kx = sx - dx;
            if (ky < 0 || ky > 4 || kx < 0 || kx > 4) continue;
            for (int oc = 0; oc < 4; oc++) acc[oc][dy * 2 + dx] += w1[oc * 25 + ky * 5 + kx] * in;
          }
      }
    for (int oc = 0; oc < 4; oc++) {
      vf mask[4];
      store(w.p1[oc] + v * L, pool4(acc[oc], mask));
      for (int p = 0; p < 4; p++) w.m1[oc][p][v] = mask[p];
    }
  }
}

void make_windows(Work& w) {
  for (int ic = 0; ic < 4; ic++)
    for (int r = 0; r < 12; r++)
      for (int b = 0; b < 2; b++)
        for (int c = 0; c < 6; c++) w.s[ic][b][r][c] = w.p1[ic][r * PW + 2 * c + b];
  for (int ic = 0; ic < 4; ic++)
    for (int sy = 0; sy < 6; sy++)
      for (int sx = 0; sx < 6; sx++) {
        float* dst = reinterpret_cast<float*>(&w.win[ic][sy][sx]);
        for (int qy = 0; qy < 4; qy++) memcpy(dst + qy * 4, &w.s[ic][sx & 1][sy + 2 * qy][sx >> 1], 16);
      }
}

void conv2_pool(const float* P, Work& w) {
  const float* w2 = P + OW2;
  for (int ob = 0; ob < 12; ob += 6) {
    vf acc[6][4];
    for (int o = 0; o < 6; o++)
      for (int p = 0; p < 4; p++) acc[o][p] = splat(P[OB2 + ob + o]);
    for (int ic = 0; ic < 4; ic++)
#pragma GCC unroll 6
      for (int sy = 0; sy < 6; sy++)
#pragma GCC unroll 6
        for (int sx = 0; sx < 6; sx++) {
          vf in = w.win[ic][sy][sx];
          for (int dy = 0; dy < 2; dy++)
            for (int dx = 0; dx < 2; dx++) {
              int ky = sy - dy, kx = sx - dx;
              if (ky < 0 || ky > 4 || kx < 0 || kx > 4) continue;
              for (int o = 0; o < 6; o++) acc[o][dy * 2 + dx] += w2[(ob + o) * 100 + ic * 25 + ky * 5 + kx] * in;
            }
        }
    for (int o = 0; o < 6; o++) w.p2[ob + o] = pool4(acc[o], w.m2[ob + o]);
  }
}

// fc, softmax cross-entropy and the fc gradients; returns the image's loss, leaves dL/dconv2 in w.d2
float head(const float* P, int label, float inv_batch, Work& w, Grad& g) {
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
  float loss = mx + logf(sum) - logits[label];
  vf dp2[12] = {};
  for (int c = 0; c < 10; c++) {
    float dl = (e[c] / sum - (c == label ? 1.0f : 0.0f)) * inv_batch;
    g.bfc[c] += dl;
    for (int oc = 0; oc < 12; oc++) {
      g.wfc[c][oc] += dl * w.p2[oc];
      dp2[oc] += dl * load(wf + c * 192 + oc * L);
    }
  }
  for (int oc = 0; oc < 12; oc++) {
    vf db = vf{};
    for (int p = 0; p < 4; p++) db += w.d2[oc][p] = w.m2[oc][p] * dp2[oc];
    g.b2[oc] += db;
  }
  return loss;
}

void conv2_backward(const float* P, Work& w, Grad& g) {
  const float* w2 = P + OW2;
  for (int ob = 0; ob < 12; ob += 6) {
    vf d[6][4];
    for (int o = 0; o < 6; o++)
      for (int p = 0; p < 4; p++) d[o][p] = w.d2[ob + o][p];
    for (int ic = 0; ic < 4; ic++)  // weight gradient: correlate windows with the output gradient
      for (int ky = 0; ky < 5; ky++)
        for (int kx = 0; kx < 5; kx++) {
          vf in[4] = {w.win[ic][ky][kx], w.win[ic][ky][kx + 1], w.win[ic][ky + 1][kx], w.win[ic][ky + 1][kx + 1]};
          for (int o = 0; o < 6; o++) {
            vf& a = g.w2[ob + o][ic * 25 + ky * 5 + kx];
            a += d[o][0] * in[0] + d[o][1] * in[1] + d[o][2] * in[2] + d[o][3] * in[3];
          }
        }
    for (int ic = 0; ic < 4; ic++)  // input gradient, in window form
#pragma GCC unroll 6
      for (int sy = 0; sy < 6; sy++)
#pragma GCC unroll 6
        for (int sx = 0; sx < 6; sx++) {
          vf a = ob == 0 ? vf{} : w.dwin[ic][sy][sx];
          for (int dy = 0; dy < 2; dy++)
            for (int dx = 0; dx < 2; dx++) {
              int ky = sy - dy, kx = sx - dx;
              if (ky < 0 || ky > 4 || kx < 0 || kx > 4) continue;
              for (int o = 0; o < 6; o++) a += w2[(ob + o) * 100 + ic * 25 + ky * 5 + kx] * d[o][dy * 2 + dx];
            }
          w.dwin[ic][sy][sx] = a;
        }
  }
}

void scatter_windows(Work& w) {  // the adjoint of make_windows: window gradients back onto the pooled map
  memset(w.ds, 0, sizeof w.ds);
  for (int ic = 0; ic < 4; ic++)
    for (int sx = 0; sx < 6; sx++)
      for (int sy = 0; sy < 6; sy++) {
        const float* src = reinterpret_cast<const float*>(&w.dwin[ic][sy][sx]);
        for (int qy = 0; qy < 4; qy++) {
          float* dst = &w.ds[ic][sx & 1][sy + 2 * qy][sx >> 1];
          for (int qx = 0; qx < 4; qx++) dst[qx] += src[qy * 4 + qx];
        }
      }
  for (int ic = 0; ic < 4; ic++)  // lanes of columns 12, 13 and rows >= 12 stay zero
    for (int r = 0; r < 12; r++)
      for (int b = 0; b < 2; b++)
        for (int c = 0; c < 6; c++) w.dp1[ic][r * PW + 2 * c + b] = w.ds[ic][b][r][c];
}

void conv1_backward(Work& w, Grad& g) {
  vf d[4][4][C1V];  // [oc][phase][vector]
  for (int oc = 0; oc < 4; oc++) {
    vf db = vf{};
    for (int p = 0; p < 4; p++)
      for (int v = 0; v < C1V; v++) db += d[oc][p][v] = w.m1[oc][p][v] * load(w.dp1[oc] + v * L);
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

// one shard of one step: forward and backward of images idx[0..n), gradient summed into out[NPARAM]
double shard_grad(const float* P, const float* x, const int64_t* y, const int64_t* idx, int n,
                  float inv_batch, Work& w, Grad& g, float* out) {
  memset(&g, 0, sizeof g);
  double loss = 0;
  for (int i = 0; i < n; i++) {
    split_image(x + idx[i] * 784, w);
    conv1_pool(P, w);
    make_windows(w);
    conv2_pool(P, w);
    loss += head(P, static_cast<int>(y[idx[i]]), inv_batch, w, g);
    conv2_backward(P, w, g);
    scatter_windows(w);
    conv1_backward(w, g);
  }
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
  return loss;
}

class Barrier {  // spins briefly, then yields: a busy machine must not stall on a descheduled peer
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    int gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_) {
      count_.store(0, std::memory_order_relaxed);
      gen_.fetch_add(1, std::memory_order_release);
      return;
    }
    for (int spins = 0; gen_.load(std::memory_order_acquire) == gen; spins++) {
      if (spins < 2000) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      } else {
        sched_yield();
      }
    }
  }

 private:
  int n_;
  std::atomic<int> count_{0}, gen_{0};
};

struct Job {
  float* params[6];
  const float* x;
  const int64_t* y;
  const int64_t* batches;
  int64_t steps, batch;
  float lr;
  int threads;
  float P[NPARAM];
  float grads[NSHARD][NPARAM];
  double losses[NSHARD];
  float total;
};

const int kSizes[6] = {100, 4, 1200, 12, 1920, 10};

void run_thread(Job& job, Barrier& bar, int t) {
  Work* w = new Work();
  Grad* g = new Grad();
  const float inv_batch = 1.0f / static_cast<float>(job.batch);
  for (int64_t step = 0; step < job.steps; step++) {
    const int64_t* idx = job.batches + step * job.batch;
    for (int s = t; s < NSHARD; s += job.threads) {
      int64_t lo = job.batch * s / NSHARD, hi = job.batch * (s + 1) / NSHARD;
      job.losses[s] = shard_grad(job.P, job.x, job.y, idx + lo, static_cast<int>(hi - lo), inv_batch, *w, *g,
                                 job.grads[s]);
    }
    bar.wait();
    if (t == 0) {  // sum shards in a fixed order, then the plain SGD step p <- p - lr * g
      double loss = 0;
      for (int s = 0; s < NSHARD; s++) loss += job.losses[s];
      job.total += static_cast<float>(loss / static_cast<double>(job.batch));
      for (int i = 0; i < NPARAM; i++) {
        float gi = job.grads[0][i];
        for (int s = 1; s < NSHARD; s++) gi += job.grads[s][i];
        job.P[i] -= job.lr * gi;
      }
    }
    bar.wait();
  }
  delete g;
  delete w;
}

}  // namespace

extern "C" {

int lenet_fast_version() { return 1; }

// k SGD steps of batch B (rows of `batches`, indices into x: (N, 784) float32, y: (N,) int64).
// params: the six parameter arrays in PyTorch order, updated in place. Returns the summed step losses.
float lenet_fast_train_steps(float** params, const float* x, const int64_t* y, const int64_t* batches,
                             int64_t steps, int64_t batch, float lr, int threads) {
  Job* job = new Job();
  for (int i = 0, off = 0; i < 6; off += kSizes[i], i++) {
    job->params[i] = params[i];
    memcpy(job->P + off, params[i], kSizes[i] * sizeof(float));
  }
  job->x = x;
  job->y = y;
  job->batches = batches;
  job->steps = steps;
  job->batch = batch;
  job->lr = lr;
  job->threads = threads < 1 ? 1 : (threads > NSHARD ? NSHARD : threads);
  job->total = 0.0f;
  Barrier bar(job->threads);
  std::vector<std::thread> pool;
  for (int t = 1; t < job->threads; t++) pool.emplace_back(run_thread, std::ref(*job), std::ref(bar), t);
  run_thread(*job, bar, 0);
  for (auto& th : pool) th.join();
  for (int i = 0, off = 0; i < 6; off += kSizes[i], i++) memcpy(params[i], job->P + off, kSizes[i] * sizeof(float));
  float total = job->total;
  delete job;
  return total;
}

}  // extern "C"

// Cycles per image of each stage of the fast kernel (min over 15 rounds of 500 calls), and of a whole
// shard of 25 images in context. Synthetic MNIST-like input (20% non-zero pixels), fixed weights.
//   g++ -O3 -march=native -std=c++17 -pthread -I src/lenet/csrc benchmarks/kernel_stages.cpp -o /tmp/stages
//   /tmp/stages
// Cycles are TSC cycles (constant rate: 2.6 GHz on the Xeon these figures in docs/speed.md come from).
#include <x86intrin.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <random>
#include <utility>

#include "lenet_fast.cpp"

int main() {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0, 0.1f);
  std::uniform_real_distribution<float> uniform(0, 1);
  std::vector<float> P(NPARAM), x(1000 * 784), w2t(1200);
  for (auto& p : P) p = normal(rng);
  for (int o = 0; o < 12; o++)
    for (int k = 0; k < 100; k++) w2t[k * 12 + o] = P[OW2 + o * 100 + k];
  for (auto& v : x) v = uniform(rng) < 0.2f ? uniform(rng) : 0.0f;
  Work* w = new Work();
  Grad* g = new Grad();
  std::pair<const char*, std::function<void()>> stages[] = {
      {"split image", [&] { split_image(x.data(), *w); }},
      {"conv1 + pool", [&] { conv1_pool(P.data(), *w); }},
      {"conv2 windows", [&] { make_windows(*w); }},
      {"conv2 + pool", [&] { conv2_pool(P.data(), w2t.data(), *w); }},
      {"fc, loss, fc grads", [&] { head(P.data(), 3, 0.01f, *w, *g); }},
      {"conv2 weight grad", [&] { conv2_wgrad(*w, *g); }},
      {"conv2 input grad", [&] { conv2_dgrad(w2t.data(), *w); }},
      {"windows -> map", [&] { scatter_windows(*w); }},
      {"conv1 weight grad", [&] { conv1_backward(*w, *g); }},
  };
  for (auto& stage : stages) stage.second();  // every buffer filled once
  double total = 0;
  for (auto& [name, run] : stages) {
    double best = 1e30;
    for (int round = 0; round < 15; round++) {
      uint64_t t0 = __rdtsc();
      for (int i = 0; i < 500; i++) run();
      best = std::min(best, double(__rdtsc() - t0) / 500);
    }
    total += best;
    printf("%-20s %7.0f\n", name, best);
  }
  printf("%-20s %7.0f\n", "sum of stages", total);
  std::vector<int64_t> idx(25), y(1000, 3);
  std::atomic<int64_t> open{0};
  double best = 1e30;
  for (int round = 0; round < 20; round++) {
    uint64_t t0 = __rdtsc();
    for (int s = 0; s < 20; s++) {
      for (int j = 0; j < 25; j++) idx[j] = (s * 25 + j + round) % 1000;
      shard_grad(P.data(), w2t.data(), x.data(), y.data(), idx.data(), 25, 0.01f, *w, *g, open, 0);
    }
    best = std::min(best, double(__rdtsc() - t0) / 500);
  }
  printf("%-20s %7.0f\n", "whole shard, per img", best);
}

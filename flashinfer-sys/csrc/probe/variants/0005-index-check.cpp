// 0005-index-check.cpp: patch 5's fc2_sum index math (fc2_shape, cursor_at, step, the warps'
// shares and rounds), copied by hand and run on the CPU over many shapes: every vector of every
// (row, expert) visited exactly once, no load past a row or in a warp's unused slots, at most 12
// loads per lane and round, the grid within 65535 rows of blocks. Not the kernel itself (that
// needs a GPU): rerun after changing either.
//
//     g++ -O2 -std=c++17 flashinfer-sys/csrc/probe/variants/0005-index-check.cpp -o /tmp/c && /tmp/c
#include <cstdio>
#include <cstdint>
#include <vector>
#include <algorithm>
constexpr int kWarp = 32, kWarps = 4, kWarpsLog2 = 2, kFc2Loads = 12;
struct Fc2Shape { int split_log2, vecs, step_k, step_j, slots, share, per_round; };
struct P { int top_k, hidden, inter; };
Fc2Shape fc2_shape(const P& p, int vec) {
  Fc2Shape s{};
  s.vecs = p.inter / vec;
  s.step_k = kWarp / s.vecs;
  s.step_j = kWarp % s.vecs;
  s.slots = int((int64_t(p.top_k) * s.vecs + kWarp - 1) / kWarp);
  while (s.split_log2 < kWarpsLog2 && (kFc2Loads << s.split_log2) < s.slots &&
         (int64_t(p.hidden) << (s.split_log2 + 1)) <= int64_t(65535) * kWarps) ++s.split_log2;
  const int split = 1 << s.split_log2;
  s.share = (s.slots + split - 1) / split;
  const int rounds = (s.share + kFc2Loads - 1) / kFc2Loads;
  s.per_round = (s.share + rounds - 1) / rounds;
  return s;
}
struct Cursor { int k, j; };
Cursor cursor_at(int slot, int lane, int vecs) { int v = slot * kWarp + lane; int k = v / vecs; return {k, v - k * vecs}; }
void step(Cursor& c, const Fc2Shape& s) { c.k += s.step_k; c.j += s.step_j; bool carry = c.j >= s.vecs; c.j = carry ? c.j - s.vecs : c.j; c.k = carry ? c.k + 1 : c.k; }
int fails = 0;
#define REQ(x) do { if (!(x)) { if (fails++ < 10) printf("FAIL %s line %d: top_k %d hidden %d inter %d vec %d\n", #x, __LINE__, p.top_k, p.hidden, p.inter, vec); return; } } while (0)
void check(P p, int vec) {
  Fc2Shape s = fc2_shape(p, vec);
  REQ(s.per_round >= 1 && s.per_round <= kFc2Loads);
  const int rpb = kWarps >> s.split_log2;
  const long gy = (p.hidden + rpb - 1) / rpb;
  REQ(gy <= 65535);
  std::vector<int> seen(size_t(p.hidden) * p.top_k * s.vecs, 0);
  std::vector<std::vector<int>> order(p.hidden);  // per row: warps writing partials
  for (long by = 0; by < gy; ++by) {
    for (int warp = 0; warp < kWarps; ++warp) {
      const int row = int((by << (kWarpsLog2 - s.split_log2)) + (warp >> s.split_log2));
      const int part = warp & ((1 << s.split_log2) - 1);
      if (row < p.hidden && part == 0) { for (int q = 1; q < (1 << s.split_log2); ++q) REQ(warp + q < kWarps && ((warp + q) >> s.split_log2) == (warp >> s.split_log2)); }
      for (int lane = 0; lane < kWarp; ++lane) {
        const int begin = row < p.hidden ? std::min(s.slots, part * s.share) : s.slots;
        const int end = std::min(s.slots, begin + s.share);
        Cursor c = cursor_at(begin, lane, s.vecs);
        int s0 = begin, n = std::min(s.per_round, end - begin);
        // issue (copy), then consume
        for (;;) {
          Cursor ci = c;
          for (int u = 0; u < kFc2Loads; ++u) {
            Cursor ref = cursor_at(s0 + u, lane, s.vecs);
            REQ(ref.k == ci.k && ref.j == ci.j);
            if (u < n && ci.k < p.top_k) {  // issue loads
              REQ(row < p.hidden && ci.j >= 0 && ci.j < s.vecs);
            }
            step(ci, s);
          }
          for (int u = 0; u < kFc2Loads; ++u) {
            bool use = u < n && c.k < p.top_k;
            if (use) { REQ(row < p.hidden); seen[(size_t(row) * p.top_k + c.k) * s.vecs + c.j]++; }
            if (u < n) step(c, s);
          }
          s0 += n;
          REQ(c.k == cursor_at(s0, lane, s.vecs).k && c.j == cursor_at(s0, lane, s.vecs).j);
          if (s0 >= end) break;
          n = std::min(s.per_round, end - s0);
        }
      }
    }
  }
  for (int x : seen) REQ(x == 1);
}
int main() {
  int shapes = 0;
  for (int vec : {8, 16})
    for (int top_k : {1, 2, 3, 4, 6, 8, 9, 16, 22, 32, 33, 40})
      for (int inter : {64, 128, 192, 256, 384, 512, 768, 1024, 1408, 2048, 4096})
        for (int hidden : {64, 128, 256, 320, 2048, 7168}) {
          if (inter % vec) continue;
          check(P{top_k, hidden, inter}, vec); ++shapes;
        }
  // grid limit
  check(P{8, 65535 * 2 + 64, 4096}, 8); ++shapes;
  for (auto q : {P{8, 2048, 768}, P{8, 7168, 2048}}) for (int vec : {8, 16}) {
    Fc2Shape s = fc2_shape(q, vec);
    printf("top_k %d hidden %d inter %d vec %d: split %d slots %d share %d per_round %d\n", q.top_k, q.hidden, q.inter, vec, 1 << s.split_log2, s.slots, s.share, s.per_round);
  }
  printf("%d shapes, %d failures\n", shapes, fails);
  return fails != 0;
}

// 0006-index-check.cpp: patch 6's fc1_swiglu load schedule (rounds of R vectors per operand in
// two register buffers A and B, rounds 0 and 1 issued before the routing scans, round r + 2
// issued into a buffer as soon as round r has been used from it, a later group of members
// reissuing rounds 0 and 1), copied by hand and run on the CPU over many (hidden, kVec, R)
// shapes and 1-3 groups: per lane and group, every vector (lane + i * 32, of hidden / kVec)
// loaded exactly once, no load at or past the row's end, each use finding its own round in the
// buffer (loaded, not overwritten), the use order equal to main's (so the per-(lane, member)
// sums are main's, bit for bit), at most 2R loads per operand outstanding. Not the kernel itself
// (that needs a GPU): rerun after changing either.
//
//     g++ -O2 -std=c++17 flashinfer-sys/csrc/probe/variants/0006-index-check.cpp -o /tmp/c && /tmp/c
#include <algorithm>
#include <cstdio>
#include <vector>
constexpr int kWarp = 32, kGroupLoads = 4;  // main's kUnroll
int fails = 0;
#define REQ(x)                                                                              \
  do {                                                                                      \
    if (!(x)) {                                                                             \
      if (fails++ < 10)                                                                     \
        printf("FAIL %s line %d: hidden %d vec %d R %d lane %d\n", #x, __LINE__, hidden, vec, \
               R, lane);                                                                    \
      return;                                                                               \
    }                                                                                       \
  } while (0)

// One lane of one warp: the kernel's issue/use sequence, with `groups` groups of members.
void check_lane(int hidden, int vec, int R, int lane, int groups) {
  const int stride = kWarp * vec, round = stride * R;
  // main's order of columns for this lane: c0 = lane * vec; c0 < hidden; c0 += stride * 4, then
  // u < 4: c = c0 + u * stride, if c < hidden.
  std::vector<int> main_order;
  for (int c0 = lane * vec; c0 < hidden; c0 += stride * kGroupLoads)
    for (int u = 0; u < kGroupLoads; ++u) {
      const int c = c0 + u * stride;
      if (c < hidden) main_order.push_back(c);
    }
  // A buffer: the column each slot holds (-1: a zero, no load), and whether it was used since.
  struct Buf { std::vector<int> col; std::vector<bool> used; };
  Buf a{std::vector<int>(R, -1), std::vector<bool>(R, true)}, b = a;
  std::vector<int> loads(hidden / vec, 0);  // the group's loads per vector (first: from the scans' side)
  int outstanding = 0;                      // loaded, not yet used (per operand)
  auto issue = [&](Buf& w, int base) {
    for (int u = 0; u < R; ++u) {
      const int c = base + lane * vec + u * stride;
      w.col[u] = -1;
      if (c < hidden) {
        REQ(c >= 0 && c % vec == 0 && c + vec <= hidden);  // a whole vector of the row
        REQ(w.used[u]);                                     // not overwriting an unused load
        w.col[u] = c;
        w.used[u] = false;
        ++loads[c / vec];
        ++outstanding;
      }
    }
    REQ(outstanding <= 2 * R);
  };
  std::vector<int> order;
  auto use = [&](Buf& w, int base) {
    for (int u = 0; u < R; ++u) {
      const int c = base + lane * vec + u * stride;
      if (c < hidden) {  // the kernel's condition
        REQ(w.col[u] == c && !w.used[u]);
        w.used[u] = true;
        --outstanding;
        order.push_back(c);
      } else {
        REQ(w.col[u] == -1);
      }
    }
  };
  issue(a, 0);
  issue(b, round);
  bool issued = true;
  for (int g = 0; g < groups; ++g) {
    if (!issued) {
      issue(a, 0);
      issue(b, round);
    }
    issued = false;
    order.clear();
    for (int base = 0; base < hidden; base += 2 * round) {
      use(a, base);
      issue(a, base + 2 * round);
      use(b, base + round);
      issue(b, base + 3 * round);
    }
    REQ(order == main_order);
    REQ(outstanding == 0);  // nothing loaded past the last use
    for (int v = 0; v < hidden / vec; ++v) REQ(loads[v] == (v % kWarp == lane ? 1 : 0));
    std::fill(loads.begin(), loads.end(), 0);  // the next group's loads (its rounds 0 and 1 on)
  }
}

struct Fmt { int vec, R; const char* name; };  // kVec, kFc1Loads<F>

int main() {
  int shapes = 0;
  std::vector<int> hiddens = {8, 16, 24, 64, 128, 192, 256, 264, 320, 512, 768, 1000, 1024, 1536,
                              2048, 2056, 2560, 2880, 3072, 4096, 5120, 6144, 7168, 8192};
  for (int h = 16; h <= 3000; h += 48) hiddens.push_back(h);
  for (int vec : {8, 16})
    for (int R : {1, 2, 3, 4, 6, 8})
      for (int hidden : hiddens) {
        if (hidden % vec) continue;
        for (int groups = 1; groups <= 3; ++groups)
          for (int lane = 0; lane < kWarp; ++lane) check_lane(hidden, vec, R, lane, groups);
        ++shapes;
      }
  // Loads per lane and operand issued before the scans, and rounds, at the layers' sizes.
  for (int hidden : {2048, 7168})
    for (auto [vec, R, name] : {Fmt{8, 4, "bf16"}, Fmt{16, 4, "e4m3"}, Fmt{16, 2, "block scale"}}) {
      const int per_lane = (hidden / vec + kWarp - 1) / kWarp;
      printf("hidden %d %s (R %d): %d vectors per lane and operand, %d before the scans, %d rounds\n",
             hidden, name, R, per_lane, per_lane < 2 * R ? per_lane : 2 * R,
             (per_lane + R - 1) / R);
    }
  printf("%d shapes (x 32 lanes x 1-3 groups), %d failures\n", shapes, fails);
  return fails != 0;
}

// topk_router.cu's kept_groups (session 22's candidate router-3, main since session 23), checked
// on the host: g++ -O2 topk_groups_check.cpp && ./a.out
// kept_groups by rank counting equals topk_group rounds of (max ordered score, then the
// smallest lane among the maxima), over every pattern of 8 group scores drawn from 4 ordered keys
// (ties everywhere; 0 is the ordered key of the all-ones NaN), every n_group and topk_group.
#include <cstdint>
#include <cstdio>
int main() {
  const uint32_t keys[4] = {0u, 1u, 0x80000000u, 0xffffffffu};
  long cases = 0;
  for (int n = 1; n <= 8; ++n)
    for (int tg = 1; tg <= n; ++tg)
      for (int pat = 0; pat < 65536; ++pat) {
        uint32_t ord[32] = {};
        for (int g = 0; g < 8; ++g) ord[g] = keys[(pat >> (2 * g)) & 3];
        // Rounds (main): lanes 0..31, open = lane < n.
        bool open[32];
        for (int l = 0; l < 32; ++l) open[l] = l < n;
        uint32_t kept_rounds = 0;
        for (int r = 0; r < tg; ++r) {
          uint32_t m = 0;
          for (int l = 0; l < 32; ++l) if (open[l] && ord[l] > m) m = ord[l];
          uint32_t inv = 0;
          for (int l = 0; l < 32; ++l) if (open[l] && ord[l] == m && ~uint32_t(l) > inv) inv = ~uint32_t(l);
          kept_rounds |= 1u << ~inv;
          open[~inv] = false;
        }
        // Ranks (router-3).
        uint32_t kept_ranks = 0;
        for (int l = 0; l < 32; ++l) {
          int ahead = 0;
          for (int g = 0; g < 8; ++g)
            ahead += (g < n && (ord[g] > ord[l] || (ord[g] == ord[l] && g < l))) ? 1 : 0;
          if (l < n && ahead < tg) kept_ranks |= 1u << l;
        }
        if (kept_rounds != kept_ranks) {
          printf("differ: n %d tg %d pattern %04x: rounds %x ranks %x\n", n, tg, pat, kept_rounds, kept_ranks);
          return 1;
        }
        ++cases;
      }
  printf("ok: %ld cases (n_group 1-8, topk_group 1-n_group, 65536 score patterns each)\n", cases);
}

// topk_router.cu's 32-bit candidates for bf16 keys (session 22's candidate router-2, main since
// session 23), checked on the host: g++ -O2 topk_keys_check.cpp && ./a.out  (about 3 s)
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>
#include <algorithm>
static uint32_t order_of_bits(uint32_t b) { return (b & 0x80000000u) ? ~b : (b | 0x80000000u); }
static uint32_t widen_ord(uint32_t k16) { return (k16 << 16) | ((k16 & 0x8000u) ? 0u : 0xffffu); }
static uint64_t cand64(uint32_t ord, uint32_t e) { return (uint64_t(ord) << 32) | uint32_t(~e); }
static uint32_t cand32(uint32_t ord, uint32_t e) { return (ord & 0xffff0000u) | (~e & 0xffffu); }
int main() {
  // 1. every bf16 pattern: the ordered key's low half follows from its high half.
  for (uint32_t h = 0; h < 65536; ++h) {
    uint32_t ord = order_of_bits(h << 16);
    if (widen_ord(ord >> 16) != ord) { printf("widen fails at %04x\n", h); return 1; }
  }
  // 2. every pair of bf16 patterns x expert pairs: 32-bit candidates order as 64-bit ones.
  const uint32_t experts[] = {0, 1, 7, 127, 128, 255, 511, 1023, 2047};
  long pairs = 0;
  for (uint32_t a = 0; a < 65536; a += 1) {
    uint32_t oa = order_of_bits(a << 16);
    for (uint32_t b = 0; b < 65536; b += 97) {
      uint32_t ob = order_of_bits(b << 16);
      for (uint32_t ea : experts) for (uint32_t eb : experts) {
        if (ea == eb && a != b) continue;  // one expert, one key
        bool g64 = cand64(oa, ea) > cand64(ob, eb), g32 = cand32(oa, ea) > cand32(ob, eb);
        if (g64 != g32) { printf("order differs %04x/%u %04x/%u\n", a, ea, b, eb); return 1; }
        ++pairs;
        if (cand32(oa, ea) == 0) { printf("a candidate is 0\n"); return 1; }
      }
    }
  }
  // 3. decoding: expert and ordered key back from a candidate.
  for (uint32_t e = 0; e < 2048; ++e) for (uint32_t h = 0; h < 65536; h += 13) {
    uint32_t ord = order_of_bits(h << 16), c = cand32(ord, e);
    if ((~c & 0xffffu) != e || widen_ord(c >> 16) != ord) { printf("decode fails\n"); return 1; }
  }
  printf("ok: 65536 keys widen back exactly; %ld candidate pairs order as 64-bit; decode of 2048 experts\n", pairs);
}

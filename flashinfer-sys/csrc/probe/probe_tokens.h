// probe_tokens.h: the token counts a probe times, from its environment variable (a stand-alone
// program's one setting): a comma-separated list of positive counts, e.g. "1,2,4,8"; a list that
// is not one ends the probe with exit code 2.
#pragma once

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace probe {

// The counts `variable` lists, or `fallback` where it is unset or empty.
inline std::vector<int> token_counts(const char* variable, std::vector<int> fallback) {
  const char* env = std::getenv(variable);
  if (env == nullptr || *env == '\0') return fallback;
  std::vector<int> tokens;
  for (const char* c = env; *c;) {
    char* end;
    const long t = std::strtol(c, &end, 10);
    if (end == c || t <= 0 || t > INT_MAX) {
      std::fprintf(stderr, "%s=%s: not a list of positive counts\n", variable, env);
      std::exit(2);
    }
    tokens.push_back(int(t));
    c = *end == ',' ? end + 1 : end;
  }
  return tokens;
}

}  // namespace probe

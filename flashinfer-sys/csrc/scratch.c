/* scratch.c: the fused MoE scratch sizing rule (scratch.h) as a C ABI entry, compiled in
 * every build so its CPU test runs without kernels and without a GPU. */
#include "flashinfer_rs.h"
#include "flashinfer_rs_testing.h"
#include "scratch.h"

size_t fi_scratch_bytes(size_t requested) { return fi_scratch_padded_bytes(requested); }

// moe_decode.h: the Hopper MoE layer's decode path (moe_decode.cu), which fi_cutlass_moe_run
// takes instead of the CUTLASS grouped GEMMs for a few tokens.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace fi::decode {

// fp8 per-tensor weights' scales, as fi_cutlass_moe_buffers has them; all null for bf16.
struct Fp8Scales {
  const float* input_quant = nullptr;  // [1]: 1 / a1
  const float* fc1_dequant = nullptr;  // [local_experts]: a1 * w13[e]
  const float* fc2_quant = nullptr;    // [1]: 1 / a2
  const float* fc2_dequant = nullptr;  // [local_experts]: a2 * w2[e]
};

// fp8 block-scale weights' scales, as fi_cutlass_moe_buffers has them (both null otherwise), and
// where run() puts the call's operands quantised per 128 (in the scratch, workspace_bytes).
struct BlockScales {
  const float* fc1 = nullptr;  // [local_experts, 2 * inter / 128, hidden / 128]
  const float* fc2 = nullptr;  // [local_experts, hidden / 128, inter / 128]
  // Set by run():
  __nv_fp8_e4m3* input = nullptr;     // [tokens, hidden]: the hidden states, per 128
  float* input_scales = nullptr;      // [tokens, hidden / 128]: each group's 1 / s
  __nv_bfloat16* swiglu = nullptr;    // [tokens * top_k, inter]: GEMM 1's activation, bf16
  float* activation_scales = nullptr; // [tokens * top_k, inter / 128]
};

// One call: the layer's shapes and the call's buffers, as fi_cutlass_moe_buffers has them.
struct Problem {
  const __nv_bfloat16* hidden_states;  // [tokens, hidden]
  const int32_t* expert_ids;           // [tokens, top_k], global ids
  const float* expert_scales;          // [tokens, top_k]
  const void* fc1;  // bf16 or e4m3 [local_experts, 2 * inter, hidden]: up rows, then gate
  const void* fc2;  // bf16 or e4m3 [local_experts, hidden, inter]
  __nv_bfloat16* output;               // [tokens, hidden]
  void* activations;  // scratch of workspace_bytes: first [tokens * top_k, inter], bf16 or e4m3
  int32_t tokens;
  int32_t top_k;
  int32_t hidden;
  int32_t inter;
  int32_t first_expert;   // this rank's first global expert id
  int32_t local_experts;  // how many it holds
  Fp8Scales fp8;          // fp8 per-tensor weights' scales (input_quant non-null: e4m3 weights)
  BlockScales blocks;     // fp8 block-scale weights' scales (fc1 non-null: e4m3 weights)
};

// Bytes of scratch a call of up to `tokens` tokens needs (`block_scale`: the weights have 128x128
// block scales, and the quantised operands live there too).
size_t workspace_bytes(int64_t tokens, int64_t top_k, int64_t hidden, int64_t inter,
                       bool block_scale);

// Enqueues the two kernels on `stream` (no allocation, no synchronisation): GEMM 1 with SwiGLU
// into `activations`, then GEMM 2 with the weighted sum into `output`. Every size was checked
// by the layer; the pointers are 16-byte aligned.
void run(const Problem& p, cudaStream_t stream);

}  // namespace fi::decode

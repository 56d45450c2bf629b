/*
 * flashinfer_rs.h: the C ABI of flashinfer-rs, the only door between Rust and FlashInfer's C++.
 *
 * Rules every entry point follows:
 *   - Plain structs and pointers in; an `fi_status` out. Nothing C++ crosses this header.
 *   - Every C++ exception (FlashInfer's checks throw) is caught inside the entry point and
 *     turned into a status plus a message, readable with `fi_last_error_message()` on the same
 *     thread until the next failing call on that thread. Nothing unwinds or aborts across it.
 *   - No allocation and no synchronisation in a launch entry point: callers pass every buffer,
 *     and the kernels are enqueued on the caller's stream. Graph capture is therefore safe.
 *   - Device pointers are plain `void*`/typed pointers into memory of the current CUDA context
 *     (the primary context, the one cudart and cudarc share).
 *
 * The Rust side (flashinfer-sys) mirrors this file in src/bindings.rs; `fi_abi_layout()` lets
 * a test prove the two agree struct by struct. Bump FI_ABI_VERSION on any change here.
 */
#ifndef FLASHINFER_RS_H
#define FLASHINFER_RS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FI_ABI_VERSION 1

/* ---- status --------------------------------------------------------------------------- */

typedef enum fi_status {
  FI_STATUS_OK = 0,
  /** An argument broke a rule this shim checks (null pointer, bad enum, size). */
  FI_STATUS_INVALID_ARGUMENT = 1,
  /** A CUDA runtime or driver call failed; the message names the call and the error. */
  FI_STATUS_CUDA_ERROR = 2,
  /** FlashInfer itself rejected the call (one of its C++ checks threw); upstream's message. */
  FI_STATUS_UPSTREAM_ERROR = 3,
  /** This library was built without the kernels for any architecture (no `sm90`/`sm100`). */
  FI_STATUS_KERNELS_NOT_BUILT = 4,
  /** The current device's architecture has no kernels in this build. */
  FI_STATUS_UNSUPPORTED_ARCH = 5,
  /** A cubin the fused MoE needs is missing, unreadable or fails its sha256. */
  FI_STATUS_CUBIN_ERROR = 6,
  /** Anything else that escaped (a non-standard exception); a bug. */
  FI_STATUS_INTERNAL_ERROR = 7,
} fi_status;

/** Message of the last failing call on this thread ("" if none). Valid until the next failing
 * call on this thread. Never NULL. */
const char* fi_last_error_message(void);

/* ---- build information ---------------------------------------------------------------- */

typedef struct fi_build_info {
  int32_t abi_version;          /**< FI_ABI_VERSION this library was built with */
  const char* flashinfer_version; /**< pinned upstream version, e.g. "0.6.13" */
  const char* bmm_artifact;     /**< batched-GEMM cubin artifact path the fused MoE loads */
  int32_t kernels_built;        /**< 0 when built with no arch feature */
  int32_t has_sm90;             /**< routing kernels for sm_90a are in this library */
  int32_t has_sm100;            /**< routing + fused MoE for sm_100a (and sm_103a) */
  int32_t cuda_version;         /**< CUDART_VERSION of the compiler that built it, 0 if none */
} fi_build_info;

fi_status fi_get_build_info(fi_build_info* out);

/** sizeof/alignof of every struct in this header, for the Rust layout test. */
typedef struct fi_abi_layout {
  size_t routing_params_size, routing_params_align;
  size_t routing_buffers_size, routing_buffers_align;
  size_t routing_buffer_sizes_size, routing_buffer_sizes_align;
  size_t build_info_size, build_info_align;
  size_t device_info_size, device_info_align;
  size_t moe_config_query_size, moe_config_query_align;
} fi_abi_layout;

fi_status fi_get_abi_layout(fi_abi_layout* out);

/* ---- devices -------------------------------------------------------------------------- */

typedef struct fi_device_info {
  int32_t device;         /**< cudaGetDevice() of the calling thread */
  int32_t sm_major;
  int32_t sm_minor;
  int32_t sm_count;
  int32_t routing_supported; /**< this build has routing kernels for this device */
  int32_t fused_supported;   /**< this build has the fused MoE for this device */
} fi_device_info;

/** Queries the calling thread's current device (no allocation, no synchronisation). */
fi_status fi_get_device_info(fi_device_info* out);

/* ---- routing -------------------------------------------------------------------------- */

/** Element types, as the ABI names them. */
typedef enum fi_dtype {
  FI_DTYPE_F32 = 0,
  FI_DTYPE_BF16 = 1,
} fi_dtype;

/** Routing methods; values are FlashInfer 0.6.13's RoutingMethodType. */
typedef enum fi_routing_method {
  FI_ROUTING_DEFAULT = 0,
  FI_ROUTING_RENORMALIZE = 1,
  FI_ROUTING_DEEPSEEK_V3 = 2,
  FI_ROUTING_LLAMA4 = 3,
  FI_ROUTING_RENORMALIZE_NAIVE = 4,
  FI_ROUTING_TOPK = 5,
  FI_ROUTING_SIGMOID_RENORM = 6,
  FI_ROUTING_MINIMAX2 = 7,
  FI_ROUTING_SIGMOID = 8,
} fi_routing_method;

typedef struct fi_routing_params {
  int32_t method;                /**< fi_routing_method */
  int32_t num_tokens;            /**< rows of logits routed (T) */
  int32_t num_experts;           /**< columns of logits (E) */
  int32_t top_k;                 /**< experts chosen per token (K) */
  int32_t n_group;               /**< DeepSeekV3 expert groups (<= 1: no grouping) */
  int32_t topk_group;            /**< DeepSeekV3 groups kept */
  int32_t local_expert_offset;   /**< first expert of this rank (expert parallel) */
  int32_t local_num_experts;     /**< experts on this rank */
  int32_t tile_tokens_dim;       /**< permutation tile (power of two, 8..256); sizes buffers */
  float routed_scaling_factor;   /**< DeepSeekV3/MiniMax2 weight scale */
  int32_t norm_topk_prob;        /**< SigmoidRenorm: renormalise the chosen weights */
  int32_t use_pdl;               /**< launch with programmatic dependent launch */
  fi_dtype logits_dtype;         /**< F32 or BF16 */
  fi_dtype bias_dtype;           /**< F32 or BF16; ignored when bias is NULL */
} fi_routing_params;

/** Caller-owned device buffers the routing kernels write. Sizes (in elements) come from
 * fi_routing_buffer_sizes() for the same (T, K, E, tile); all int32 unless noted. */
typedef struct fi_routing_buffers {
  void* topk_weights;                  /**< bf16 [T, K] */
  void* topk_packed;                   /**< {bf16 score, int16 expert} [T, K], 4 bytes each */
  int32_t* expert_counts;              /**< [max(2E, 512)] */
  int32_t* permuted_idx_size;          /**< [1]: padded token count after permutation */
  int32_t* expanded_idx_to_permuted_idx; /**< [T * K] */
  int32_t* permuted_idx_to_token_idx;  /**< [max_padded] */
  int32_t* cta_idx_xy_to_batch_idx;    /**< [max_ctas] */
  int32_t* cta_idx_xy_to_mn_limit;     /**< [max_ctas] */
  int32_t* num_non_exiting_ctas;       /**< [1] */
} fi_routing_buffers;

typedef struct fi_routing_buffer_sizes {
  int64_t topk;            /**< T * K: topk_weights, topk_packed, expanded_idx_to_permuted_idx */
  int64_t expert_counts;   /**< max(2E, 512) */
  int64_t max_padded;      /**< permuted_idx_to_token_idx */
  int64_t max_ctas;        /**< cta_idx_xy_to_batch_idx, cta_idx_xy_to_mn_limit */
} fi_routing_buffer_sizes;

/** Element counts of each routing buffer for a problem (host arithmetic only). */
fi_status fi_routing_buffer_sizes_for(int32_t num_tokens, int32_t top_k, int32_t num_experts,
                                      int32_t tile_tokens_dim, fi_routing_buffer_sizes* out);

/** Routes `num_tokens` rows of `logits` [T, E] on `stream` (a cudaStream_t, NULL = legacy).
 *   bias   [E] of bias_dtype, or NULL (DeepSeekV3 and MiniMax2 only).
 *   replay [>= T, K] int16, or NULL: replay[t][k] = k-th chosen global expert id of token t,
 *          in descending score order. Rows >= T are never written.
 * The caller has checked the method's limits; this shim re-checks what it must to stay
 * memory safe and reports upstream's own check failures as FI_STATUS_UPSTREAM_ERROR. */
fi_status fi_routing_run(const fi_routing_params* params, const void* logits, const void* bias,
                         const fi_routing_buffers* buffers, int16_t* replay, void* stream);

/** Upstream's separate DeepSeekV3 router (`fused_topk_deepseek`, noAuxTcKernels.cu), which
 * FlashInfer supports on sm_90: a cross-check for the DeepSeekV3 path.
 *   scores [T, E] (F32 or BF16), bias [E] (F32 or BF16, required),
 *   topk_values [T, K] out, of scores_dtype; topk_indices [T, K] int32 out;
 *   replay [>= T, K] int16 or NULL. */
fi_status fi_noaux_tc_run(int32_t num_tokens, int32_t num_experts, int32_t top_k, int32_t n_group,
                          int32_t topk_group, float routed_scaling_factor,
                          const void* scores, fi_dtype scores_dtype, const void* bias,
                          fi_dtype bias_dtype, void* topk_values, int32_t* topk_indices,
                          int16_t* replay, int32_t use_pdl, void* stream);

/* ---- fused MoE (sm_100a builds only) ---------------------------------------------------- */

/** Element types of the fused MoE, as upstream's `batchedGemm::trtllm::gen::Dtype` values are
 * chosen by the safe layer; passed through unchanged. */
typedef struct fi_moe_config_query {
  int64_t dtype_act;            /**< upstream Dtype of the activations */
  int64_t dtype_weights;        /**< upstream Dtype of the weights */
  int64_t fp8_quantization;     /**< 0 none, 1 DeepSeekFp8, 2 MxFp8, 3 PerTensorFp8 */
  int64_t top_k;                /**< experts per token */
  int64_t hidden_size;          /**< model hidden size */
  int64_t intermediate_size;    /**< expert intermediate size */
  int64_t num_local_experts;    /**< experts on this rank */
  int64_t activation;           /**< upstream ActivationType value */
  int32_t use_shuffled_weight;  /**< weights are pre-shuffled for the kernels */
  int32_t weight_layout;        /**< upstream MatrixLayout value */
  int32_t use_per_token_scaling; /**< fp4 only: per-token activation scales */
  int32_t has_gemm1_bias_delta; /**< gemm1 takes an Mn bias (LoRA delta) */
  int64_t num_tokens;           /**< tokens of the problem to tune for */
} fi_moe_config_query;

/** Valid (tile_n, config) tactic pairs for a fused MoE problem (upstream's
 * `trtllm_get_valid_moe_configs`). Writes up to `capacity` pairs as 2 * capacity int64 into
 * `pairs` and the total number of valid pairs into `count` (which may exceed `capacity`: call
 * again with more room). Host-side only; needs no GPU. */
fi_status fi_moe_valid_configs(const fi_moe_config_query* query, int64_t* pairs,
                               int32_t capacity, int32_t* count);

#ifdef __cplusplus
}
#endif

#endif /* FLASHINFER_RS_H */

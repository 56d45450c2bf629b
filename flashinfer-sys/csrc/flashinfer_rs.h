/*
 * flashinfer_rs.h: the C ABI of flashinfer-rs, the only door between Rust and FlashInfer's C++.
 *
 * Rules every entry point follows:
 *   - Plain structs and pointers in; an `fi_status` out. Nothing C++ crosses this header.
 *   - Every C++ exception (FlashInfer's checks throw) is caught inside the entry point and
 *     turned into a status plus a message, readable with `fi_last_error_message()` on the same
 *     thread until the next failing call on that thread. Nothing unwinds or aborts across it.
 *   - No synchronisation in a launch entry point, and no allocation in the routing ones: callers
 *     pass every buffer and the kernels are enqueued on the caller's stream. The fused MoE
 *     (fi_moe_run) needs scratch whose size only upstream knows; it takes it stream-ordered
 *     on the caller's stream (see fi_moe_run), which graph capture records as allocation
 *     nodes. Graph capture is therefore safe for every entry point.
 *   - Device pointers are plain `void*`/typed pointers into memory of the current CUDA context
 *     (the primary context, the one cudart and cudarc share).
 *
 * The Rust side (flashinfer-sys) mirrors this file and flashinfer_rs_testing.h (entry points
 * that exist for tests: layout probe, gates driven with described devices, dry runs) in
 * src/bindings.rs; `fi_get_abi_layout()` lets a test prove the two agree struct by struct.
 * Bump FI_ABI_VERSION on any change to either header.
 */
#ifndef FLASHINFER_RS_H
#define FLASHINFER_RS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FI_ABI_VERSION 13

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
  /** flashinfer-sys was built against a prebuilt kernel library (FLASHINFER_RS_KERNELS_LIB)
   * that cannot be used: missing, altered (sha256), or built for another crate version,
   * FlashInfer version, ABI version or architecture. Never returned by the library itself. */
  FI_STATUS_KERNELS_LIBRARY_ERROR = 8,
} fi_status;

/** Message of the last failing call on this thread ("" if none). Valid until the next failing
 * call on this thread. Never NULL. */
const char* fi_last_error_message(void);

/** For the last failing call on this thread that returned FI_STATUS_CUDA_ERROR: the CUDA
 * runtime call that failed (e.g. "cudaMallocAsync") and its cudaError_t value; "" and 0 after
 * any other failure. Same lifetime rules as fi_last_error_message. */
const char* fi_last_error_call(void);
int32_t fi_last_error_cuda_code(void);

/* ---- build information ---------------------------------------------------------------- */

typedef struct fi_build_info {
  int32_t abi_version;          /**< FI_ABI_VERSION this library was built with */
  const char* flashinfer_version; /**< pinned upstream version, e.g. "0.6.13" */
  const char* bmm_artifact;     /**< batched-GEMM cubin artifact path the fused MoE loads */
  int32_t kernels_built;        /**< 0 when built with no arch feature */
  int32_t has_sm90;             /**< routing kernels for sm_90a are in this library */
  int32_t has_sm100;            /**< routing + fused MoE for Blackwell (sm_100 and sm_103) */
  int32_t cuda_version;         /**< CUDART_VERSION of the compiler that built it, 0 if none */
  const char* targets;          /**< machine-code targets, e.g. "sm_90a,sm_100f" ("" without
                                     kernels): sm_90a runs on sm_90; sm_100f, the sm_100 family
                                     target of routing and the fused MoE's own kernels, runs on
                                     sm_100 and sm_103 */
  const char* crate_version;    /**< version of the flashinfer-sys crate that built it */
  const char* patches;          /**< our patches applied to the FlashInfer sources, e.g.
                                     "0001,0002,0003,0004,0005,0006,0008" ("" without kernels) */
  int32_t has_cutlass_moe;      /**< FlashInfer's CUTLASS fused MoE for Hopper (sm_90a, feature
                                     sm90-moe) is in this library */
  int32_t has_cutlass_moe_fp8;  /**< ... with its fp8 GEMMs, per-tensor and block scale (feature
                                    sm90-moe-fp8) */
} fi_build_info;

fi_status fi_get_build_info(fi_build_info* out);

/* ---- devices -------------------------------------------------------------------------- */

typedef struct fi_device_info {
  int32_t device;         /**< cudaGetDevice() of the calling thread */
  int32_t sm_major;
  int32_t sm_minor;
  int32_t sm_count;
  int32_t routing_supported; /**< this build has routing kernels for this device */
  int32_t fused_supported;   /**< this build has the fused MoE for this device */
  int32_t cutlass_moe_supported; /**< this build has the CUTLASS fused MoE for this device */
} fi_device_info;

/** Queries the calling thread's current device (no allocation, no synchronisation). */
fi_status fi_get_device_info(fi_device_info* out);

/* ---- routing -------------------------------------------------------------------------- */

/** Element types, as the ABI names them. */
typedef enum fi_dtype {
  FI_DTYPE_F32 = 0,
  FI_DTYPE_BF16 = 1,
  FI_DTYPE_F16 = 2,
  FI_DTYPE_E4M3 = 3,  /**< float8_e4m3fn */
  FI_DTYPE_U8 = 4,    /**< bytes: packed fp4 pairs, ue8m0 scales */
  FI_DTYPE_I32 = 5,
  FI_DTYPE_I16 = 6,
} fi_dtype;

/** Routing methods; values are FlashInfer 0.6.13's RoutingMethodType, except
 * FI_ROUTING_DEEPSEEK_V2: flashinfer-rs's own, served only by fi_topk_route (outside upstream's
 * values, so fi_routing_run and the fused MoE refuse it). */
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
  /** DeepSeek-V2: softmax key; grouped: a group scores its best key (fi_topk_route only). */
  FI_ROUTING_DEEPSEEK_V2 = 100,
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

/** A call of upstream's separate DeepSeekV3 router (NoAuxTc). */
typedef struct fi_noaux_tc_params {
  int32_t num_tokens;            /**< rows of scores routed (T) */
  int32_t num_experts;           /**< columns of scores (E) */
  int32_t top_k;                 /**< experts chosen per token (K) */
  int32_t n_group;               /**< expert groups (1: none) */
  int32_t topk_group;            /**< groups kept (1 without groups) */
  float routed_scaling_factor;   /**< scale of the normalised weights */
  fi_dtype scores_dtype;         /**< F32 or BF16; also the dtype of topk_values */
  fi_dtype bias_dtype;           /**< F32 or BF16 */
  int32_t use_pdl;               /**< launch with programmatic dependent launch */
} fi_noaux_tc_params;

/** Upstream's separate DeepSeekV3 router (`fused_topk_deepseek`, noAuxTcKernels.cu), which
 * FlashInfer supports on sm_90: a cross-check for the DeepSeekV3 path.
 *   scores [T, E] of scores_dtype, bias [E] of bias_dtype (required),
 *   topk_values [T, K] out, of scores_dtype; topk_indices [T, K] int32 out;
 *   replay [>= T, K] int16 or NULL; stream a cudaStream_t (NULL = legacy). */
fi_status fi_noaux_tc_run(const fi_noaux_tc_params* params, const void* scores, const void* bias,
                          void* topk_values, int32_t* topk_indices, int16_t* replay,
                          void* stream);

/** A call of flashinfer-rs's own top-k router (topk_router.cu): ids and weights only. */
typedef struct fi_topk_params {
  int32_t method;                /**< fi_routing_method */
  int32_t num_tokens;            /**< rows of logits routed (T) */
  int32_t num_experts;           /**< columns of logits (E), 1..2048 */
  int32_t top_k;                 /**< experts chosen per token (K), 1..min(32, E) */
  int32_t n_group;               /**< DeepSeekV3 / V2 expert groups (<= 1: ungrouped) */
  int32_t topk_group;            /**< DeepSeekV3 / V2 groups kept */
  float routed_scaling_factor;   /**< DeepSeekV3 / V2 / MiniMax2 scale of the weights */
  int32_t norm_topk_prob;        /**< SigmoidRenorm, DeepSeekV2: renormalise the chosen weights */
  fi_dtype logits_dtype;         /**< F32 or BF16 */
  fi_dtype bias_dtype;           /**< F32 or BF16 (read only with a bias) */
  int32_t use_pdl;               /**< launch with programmatic dependent launch */
} fi_topk_params;

/** Where a top-k call reads and writes; every output may be NULL, not all of them.
 *   logits [T, E] of logits_dtype; bias [E] of bias_dtype, required by DeepSeekV3 and
 *   MiniMax2, NULL otherwise; ids_i16 [>= T, K] (a replay buffer: rows >= T untouched),
 *   ids_i32 [T, K], weights_f32 [T, K], weights_bf16 [T, K] bf16. */
typedef struct fi_topk_buffers {
  const void* logits;
  const void* bias;
  int16_t* ids_i16;
  int32_t* ids_i32;
  float* weights_f32;
  void* weights_bf16;
} fi_topk_buffers;

/** Routes `params.num_tokens` rows on `stream` (a cudaStream_t; NULL = legacy): one kernel,
 * nothing allocated, nothing synchronised. Experts in descending key order, equal keys to the
 * smaller index; the bias as given (not rounded). */
fi_status fi_topk_route(const fi_topk_params* params, const fi_topk_buffers* buffers,
                        void* stream);

/* ---- fused MoE (sm100 builds only) ------------------------------------------------------ */

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

/* ---- fused MoE runs (sm100 builds only) -------------------------------------------------- */
/** A borrowed, contiguous row-major device tensor. `data == NULL` means "not given" (upstream's
 * Optional); then the other fields are ignored. */
typedef struct fi_tensor {
  void* data;         /**< device pointer of the current context, or NULL */
  int32_t dtype;      /**< fi_dtype */
  int32_t ndim;       /**< 1..4 */
  int64_t shape[4];   /**< sizes of the first ndim dimensions */
} fi_tensor;

/** Which upstream entry point fi_moe_run calls. */
typedef enum fi_moe_op {
  FI_MOE_BF16 = 0,              /**< trtllm_bf16_moe */
  FI_MOE_FP8_PER_TENSOR = 1,    /**< trtllm_fp8_per_tensor_scale_moe */
  FI_MOE_FP8_BLOCK_SCALE = 2,   /**< trtllm_fp8_block_scale_moe (DeepSeek fp8 or MxFp8) */
  FI_MOE_FP4_BLOCK_SCALE = 3,   /**< trtllm_fp4_block_scale_moe (nvfp4 or mxfp4 weights) */
} fi_moe_op;

/** Every argument of the four upstream fused MoE entry points, by upstream's names. Tensors an
 * op does not take must be left NULL; fi_moe_run refuses any that are set. */
typedef struct fi_moe_args {
  int32_t op;                         /**< fi_moe_op */
  int32_t device;                     /**< CUDA ordinal every tensor lives on */
  /* routing */
  fi_tensor routing_logits;           /**< [T, E] f32/bf16, or NULL with precomputed routing */
  fi_tensor routing_bias;             /**< [E] f32/bf16 or NULL */
  fi_tensor expert_indices;           /**< bf16/fp8 block: packed [T, K] i32 (id << 16 | bf16 w)
                                           or NULL; fp4: topk_ids [T, K] i32 (always given) */
  fi_tensor expert_weights;           /**< bf16/fp8 block: precomputed [T, K] or NULL;
                                           fp4: topk_weights [T, K] bf16 (always given) */
  /* activations and weights */
  fi_tensor hidden_states;            /**< [T, H] (fp4 packed: [T, H / 2] u8) */
  fi_tensor hidden_states_scale;      /**< block scales of hidden_states, or NULL */
  fi_tensor gemm1_weights;            /**< [E_local, M1, H] or BlockMajorK [E_local, H/bk, M1, bk] */
  fi_tensor gemm1_weights_scale;      /**< block scales of gemm1_weights, or NULL */
  fi_tensor gemm1_bias;               /**< fp4: [E_local, M1] f32; bf16/fp8 block: LoRA delta
                                           [T, K, 2I] bf16; or NULL */
  fi_tensor gemm1_alpha;              /**< [E_local] f32 SwiGLU alpha, or NULL */
  fi_tensor gemm1_beta;               /**< [E_local] f32 SwiGLU beta, or NULL */
  fi_tensor gemm1_clamp_limit;        /**< [E_local] f32 SwiGLU clamp, or NULL */
  fi_tensor gemm2_weights;            /**< [E_local, H, I] (or BlockMajorK) */
  fi_tensor gemm2_weights_scale;      /**< block scales of gemm2_weights, or NULL */
  fi_tensor gemm2_bias;               /**< fp4: [E_local, H] f32, or NULL */
  fi_tensor output1_scales_scalar;    /**< [E_local] f32, or NULL */
  fi_tensor output1_scales_gate_scalar; /**< [E_local] f32, or NULL */
  fi_tensor output2_scales_scalar;    /**< [E_local] f32, or NULL */
  fi_tensor per_token_scales;         /**< fp4: [T] f32, or NULL */
  fi_tensor output;                   /**< [T, H] bf16, written when do_finalize */
  fi_tensor routing_replay_out;       /**< [>= T, K] i16 routed expert ids, or NULL */
  /* scalars */
  int64_t num_experts;                /**< E */
  int64_t top_k;                      /**< K */
  int64_t n_group;                    /**< < 0: not given */
  int64_t topk_group;                 /**< < 0: not given */
  int64_t intermediate_size;          /**< I */
  int64_t local_expert_offset;        /**< first expert of this rank */
  int64_t local_num_experts;          /**< E_local */
  double routed_scaling_factor;       /**< used when has_routed_scaling_factor */
  int32_t has_routed_scaling_factor;
  int32_t routing_method;             /**< fi_routing_method */
  int32_t routing_input_mode;         /**< fp4: 0 logits, 1 packed, 2 unpacked precomputed */
  int32_t use_routing_scales_on_input; /**< fp8 per tensor: routing weights scale the input */
  int32_t use_shuffled_weight;        /**< bf16, fp8 block */
  int32_t weight_layout;              /**< bf16, fp8 block: 0 MajorK, 1 MajorMn, 2 BlockMajorK */
  int32_t fp8_quantization;           /**< fp8 block: 1 DeepSeekFp8, 2 MxFp8 */
  int32_t activation;                 /**< upstream ActivationType */
  int32_t do_finalize;                /**< 1: reduce into `output`; 0: return unfinalized */
  int32_t enable_pdl;                 /**< programmatic dependent launch */
  int32_t norm_topk_prob;             /**< SigmoidRenorm: renormalise the chosen weights */
  int32_t reserved;                   /**< 0 */
  int64_t tile_n;                     /**< tactic: token tile, or -1 with config -1 (default) */
  int64_t config;                     /**< tactic: kernel config index, or -1 */
} fi_moe_args;

/** The tensors of fi_moe_args, in field order: the one list that the shim's marshalling and
 * its "refuse what the op does not take" rule (moe_marshal.cu), and the Rust side's tensor enum
 * (`flashinfer_sys::MoeTensor`, generated from this list by `cargo xtask generate`), are
 * derived from. Add a tensor field above and here together. */
#define FI_MOE_TENSORS(X)                                                                     \
  X(routing_logits) X(routing_bias) X(expert_indices) X(expert_weights) X(hidden_states)       \
  X(hidden_states_scale) X(gemm1_weights) X(gemm1_weights_scale) X(gemm1_bias)                \
  X(gemm1_alpha) X(gemm1_beta) X(gemm1_clamp_limit) X(gemm2_weights) X(gemm2_weights_scale)   \
  X(gemm2_bias) X(output1_scales_scalar) X(output1_scales_gate_scalar)                        \
  X(output2_scales_scalar) X(per_token_scales) X(output) X(routing_replay_out)

/** Tensors of an unfinalized run (do_finalize == 0), owned by the handle: gemm2_output
 * [padded, H] bf16, expert weights [T, K], expanded_idx_to_permuted_idx [T * K] i32. */
typedef struct fi_moe_outputs fi_moe_outputs;

/** Runs one fused MoE call on `stream` (a cudaStream_t of `args->device`).
 *
 * Scratch: upstream sizes its workspaces per call. They are taken stream-ordered on `stream`
 * (cudaMallocFromPoolAsync from a pool of this library with a high release threshold, or
 * cudaMallocAsync while `stream` is being captured, which a graph records as allocation
 * nodes) and returned with cudaFreeAsync on the same stream: no synchronisation.
 * Cubins: the first call of a kernel in a context loads it through the loader registered with
 * fi_set_cubin_loader (FI_STATUS_CUBIN_ERROR when none is set or it fails).
 * Upstream keeps a process-wide, unlocked module cache; this entry point serialises the host
 * part of calls with a mutex (kernels still run concurrently on their streams).
 * When do_finalize == 0, `*unfinalized` receives a handle to free with fi_moe_outputs_free
 * (stream-ordered on `stream`); otherwise it is set to NULL. */
fi_status fi_moe_run(const fi_moe_args* args, void* stream, fi_moe_outputs** unfinalized);

/** Number of tensors in `outputs`. */
int32_t fi_moe_outputs_count(const fi_moe_outputs* outputs);
/** Describes tensor `index` of `outputs` (data NULL where upstream returned none). */
fi_status fi_moe_outputs_get(const fi_moe_outputs* outputs, int32_t index, fi_tensor* out);
/** Releases the tensors (stream-ordered on the run's stream) and the handle. NULL is a no-op. */
void fi_moe_outputs_free(fi_moe_outputs* outputs);

/* ---- cubins ------------------------------------------------------------------------------ */
/** Receives a cubin's bytes inside a loader call; copies them. */
typedef void (*fi_cubin_sink)(void* sink_ctx, const uint8_t* data, size_t len);
/** Loads the cubin at `path` (relative to the cubin directory, e.g.
 * "<artifact>/Bmm_...cubin") whose sha256 upstream expects to be `sha256` (hex, may be ""),
 * passing its bytes to `sink(sink_ctx, ...)` once. Returns 0 on success; otherwise writes a
 * NUL-terminated reason into `err` (capacity `err_cap`) and returns nonzero. Must not unwind. */
typedef int32_t (*fi_cubin_loader)(void* user, const char* path, const char* sha256,
                                   fi_cubin_sink sink, void* sink_ctx, char* err, size_t err_cap);
/** Sets the process-wide cubin loader (NULL unsets it). `user` is passed back to it. */
fi_status fi_set_cubin_loader(fi_cubin_loader loader, void* user);
/** Loads the cubin at `path` through upstream's own hook, exactly as a fused launch would
 * (upstream -> our trampoline -> the registered loader), and writes its size to `size`.
 * Needs no GPU: a pre-flight check of a deployment's cubin cache. FI_STATUS_CUBIN_ERROR when
 * the loader refuses it. */
fi_status fi_cubin_probe(const char* path, const char* sha256, size_t* size);

/* ---- the CUTLASS fused MoE (Hopper; feature sm90-moe) ----------------------------------- */

/* FlashInfer's CUTLASS fused MoE (`CutlassMoeFCRunner`, TMA warp-specialised grouped GEMMs for
 * sm_90a): bf16 activations and weights, or fp8 weights (per-tensor or 128x128 block scales,
 * fi_cutlass_moe_weights), SwiGLU,
 * bf16 output, on precomputed expert ids
 * (int32) and scales (fp32), e.g. from fi_topk_route. A layer is created once for its sizes
 * (host memory only; checks the current device) and run per batch: fi_cutlass_moe_run enqueues
 * its kernels on the caller's stream into caller-provided workspace, with no allocation and no
 * synchronisation, so it can be captured in a CUDA graph. A layer serialises its own calls (the
 * runner keeps per-call state), so one layer may be shared between threads. */
typedef struct fi_cutlass_moe fi_cutlass_moe;

/** The expert weights' element type, and with it the GEMMs' operands. */
typedef enum fi_cutlass_moe_weights {
  /** bf16 weights x bf16 activations (`CutlassMoeFCRunner<bf16, bf16>`). */
  FI_CUTLASS_MOE_WEIGHTS_BF16 = 0,
  /** fp8 e4m3 weights with one dequantisation scale per expert and GEMM, x e4m3 activations
   * with one static scale per GEMM input (`CutlassMoeFCRunner<fp8, fp8, bf16>`; feature
   * sm90-moe-fp8): the call quantises the bf16 hidden states with fp8_input_quant into its
   * workspace, GEMM 1 dequantises with fp8_fc1_dequant, the SwiGLU output is quantised with
   * fp8_fc2_quant, GEMM 2 dequantises with fp8_fc2_dequant (fi_cutlass_moe_buffers). The
   * decode kernels compute the same with e4m3 weights. */
  FI_CUTLASS_MOE_WEIGHTS_FP8 = 1,
  /** fp8 e4m3 weights with one f32 scale per 128x128 block of each expert's matrix (DeepSeek-V3's
   * `weight_scale_inv`: the weight is e4m3 times its block's scale), x bf16 activations that each
   * GEMM quantises per token and 128 columns (scale amax / 448) (`CutlassMoeFCRunner<bf16,
   * fp8>` with upstream's use_deepseek_fp8_block_scale; feature sm90-moe-fp8): the scales in
   * fc1_block_scales and fc2_block_scales (fi_cutlass_moe_buffers). hidden_size and
   * intermediate_size must be multiples of 128 and at most 20480. Their tactics are the
   * block-scale GEMM's two tiles (the same kernel, one reduction order): 0 = 128x64 (upstream's,
   * one CTA per SM), 1 = 64x64 (two CTAs per SM); tactics -1 take 64x64 in GEMM 2, and in
   * GEMM 1 below 64 mean rows per expert (128x64 from there on). The decode kernels take these weights too
   * (decode_max_tokens), with the same quantisation. */
  FI_CUTLASS_MOE_WEIGHTS_FP8_BLOCK = 2,
} fi_cutlass_moe_weights;

typedef struct fi_cutlass_moe_params {
  int32_t num_experts;       /**< global expert count: the ids index these */
  int32_t top_k;             /**< experts per token, 1..=num_experts */
  int32_t hidden_size;       /**< a multiple of 64 */
  int32_t intermediate_size; /**< a multiple of 64 */
  int32_t ep_size;           /**< expert-parallel ranks; num_experts % ep_size == 0 */
  int32_t ep_rank;           /**< this rank holds experts [ep_rank * L, (ep_rank + 1) * L),
                                  L = num_experts / ep_size; ids outside add nothing */
  int32_t max_tokens;        /**< the most tokens one call takes (sizes the workspace) */
  int32_t tactic_gemm1;      /**< index into the GEMM 1 tactics (fi_cutlass_moe_tactic_count),
                                  or -1: chosen per call (the default; see fi_cutlass_moe_run) */
  int32_t tactic_gemm2;      /**< likewise for GEMM 2; -1 in both or in neither */
  int32_t decode_max_tokens; /**< calls of at most this many tokens (and at least one) take the
                                  decode kernels instead of the grouped GEMMs; 0: never. The
                                  workspace holds their activations for
                                  min(decode_max_tokens, max_tokens) tokens */
  int32_t weights;           /**< fi_cutlass_moe_weights */
} fi_cutlass_moe_params;

/** One tactic of a grouped GEMM (fi_cutlass_moe_tactic_info): a TMA warp-specialised config
 * of the runner, or for fp8 block-scale weights a tile of the block-scale GEMM. */
typedef struct fi_cutlass_moe_tactic {
  int32_t tile_m;   /**< CTA tile rows: of the tokens, or of the weights when swap_ab */
  int32_t tile_n;   /**< CTA tile columns: of the weights, or of the tokens when swap_ab */
  int32_t swap_ab;  /**< 1: the weights are the GEMM's A operand (for few tokens per expert) */
  int32_t finalize; /**< 1 (GEMM 2 only): the weighted sum is fused in the GEMM's epilogue
                         (never in this build: see fi_cutlass_moe_run) */
} fi_cutlass_moe_tactic;

/** Checks `params` and the calling thread's current device (FI_STATUS_UNSUPPORTED_ARCH unless
 * it is an sm_90 part and this library has the CUTLASS MoE) and creates a layer in `*out`. */
fi_status fi_cutlass_moe_create(const fi_cutlass_moe_params* params, fi_cutlass_moe** out);

/** Frees a layer (NULL is a no-op). No call of it may be running. */
void fi_cutlass_moe_destroy(fi_cutlass_moe* layer);

/** Bytes of device workspace a call needs at up to `max_tokens` tokens. */
fi_status fi_cutlass_moe_workspace_size(const fi_cutlass_moe* layer, size_t* bytes);

/** How many tactics each GEMM has (valid indices for the params). */
fi_status fi_cutlass_moe_tactic_count(const fi_cutlass_moe* layer, int32_t* gemm1,
                                      int32_t* gemm2);

/** Describes tactic `index` of GEMM `gemm` (1 or 2) in `*out`. */
fi_status fi_cutlass_moe_tactic_info(const fi_cutlass_moe* layer, int32_t gemm, int32_t index,
                                     fi_cutlass_moe_tactic* out);

/** Which kernels fi_cutlass_moe_run launches for a call (fi_cutlass_moe_kernels_for). */
typedef enum fi_cutlass_moe_path {
  FI_CUTLASS_MOE_PATH_NONE = 0,   /**< zero tokens: nothing */
  FI_CUTLASS_MOE_PATH_DECODE = 1, /**< the decode kernels (1..=decode_max_tokens tokens) */
  FI_CUTLASS_MOE_PATH_GEMMS = 2,  /**< the grouped GEMMs, with fi_cutlass_moe_kernels' tactics */
} fi_cutlass_moe_path;

/** What one call launches (fi_cutlass_moe_kernels_for): its path, and on the GEMMs' path the
 * tactic each GEMM runs with (for fp8 block-scale weights, the block-scale GEMM's tile). */
typedef struct fi_cutlass_moe_kernels {
  int32_t path;         /**< fi_cutlass_moe_path */
  int32_t tactic_gemm1; /**< FI_CUTLASS_MOE_PATH_GEMMS: GEMM 1's tactic (an index for
                             fi_cutlass_moe_tactic_info); -1 on the other paths */
  int32_t tactic_gemm2; /**< likewise for GEMM 2 */
} fi_cutlass_moe_kernels;

/** What fi_cutlass_moe_run launches for a call of `num_tokens` tokens (0..=max_tokens) in
 * `*out`: the rule the call itself applies (the same function), host-side, no launch.
 * FI_STATUS_INVALID_ARGUMENT for a NULL pointer or a count outside 0..=max_tokens;
 * FI_STATUS_KERNELS_NOT_BUILT in a build without the CUTLASS MoE. */
fi_status fi_cutlass_moe_kernels_for(const fi_cutlass_moe* layer, int32_t num_tokens,
                                     fi_cutlass_moe_kernels* out);

typedef struct fi_cutlass_moe_buffers {
  int32_t num_tokens;          /**< 0..=max_tokens rows of the inputs; 0 launches nothing */
  const void* hidden_states;   /**< bf16 [num_tokens, hidden_size] */
  const int32_t* expert_ids;   /**< [num_tokens, top_k] global ids in [0, num_experts) */
  const float* expert_scales;  /**< [num_tokens, top_k] the weight of each chosen expert */
  const void* fc1_weights;     /**< bf16 or e4m3 [L, 2 * intermediate_size, hidden_size]: each
                                    expert's linear (up) rows, then its gate rows */
  const void* fc2_weights;     /**< bf16 or e4m3 [L, hidden_size, intermediate_size] (down) */
  void* output;                /**< bf16 [num_tokens, hidden_size], written */
  void* workspace;             /**< device memory of fi_cutlass_moe_workspace_size bytes */
  size_t workspace_bytes;
  /* fp8 weights only (NULL for bf16), device f32, read by the kernels (so a graph replays
   * whatever they hold then); a = an activation's dequantisation scale, w = a weight's: */
  const float* fp8_input_quant; /**< [1]: 1 / a1, multiplies the hidden states before e4m3 */
  const float* fp8_fc1_dequant; /**< [L]: a1 * w13[e], GEMM 1's output scale per expert */
  const float* fp8_fc2_quant;   /**< [1]: 1 / a2, multiplies the SwiGLU output before e4m3 */
  const float* fp8_fc2_dequant; /**< [L]: a2 * w2[e], GEMM 2's output scale per expert */
  /* fp8 block-scale weights only (NULL otherwise), device f32, row-major per expert: */
  const float* fc1_block_scales; /**< [L, 2 * intermediate_size / 128, hidden_size / 128] */
  const float* fc2_block_scales; /**< [L, hidden_size / 128, intermediate_size / 128] */
} fi_cutlass_moe_buffers;

/** output[t] = sum over j of expert_scales[t, j] * down(SwiGLU(up_gate(x[t]))) of expert
 * expert_ids[t, j], over this rank's experts; enqueued on `stream` (a cudaStream_t). A layer
 * created with tactics -1 picks them per call from the mean rows per expert,
 * num_tokens * top_k / num_experts (BENCHMARKS.md sections 7 and 7n): below 16, the 128x16 tile
 * with swapped operands in both GEMMs (its 16 columns over an expert's tokens); from 16, the
 * 128x64 tile with swapped operands; from 64 on, the 128x256 tile (fp8 block-scale weights: the
 * 64x64 tile, but 128x64 in GEMM 1 from 64 on). The weighted sum is the runner's finalize kernel
 * (the GEMM epilogue that fuses it is not built: its atomic scatter is not deterministic), so
 * equal inputs give equal output bits. A call of 1..=decode_max_tokens tokens takes the decode kernels
 * instead (two bandwidth-bound kernels that read each routed expert's weights once; the tactics
 * do not apply), as deterministic. fi_cutlass_moe_kernels_for names what a call takes. */
fi_status fi_cutlass_moe_run(fi_cutlass_moe* layer, const fi_cutlass_moe_buffers* buffers,
                             void* stream);

/* ---- Weights to fp8 at load ------------------------------------------------------------- */

/** Quantises `experts` stacked bf16 matrices [rows, cols] (`weights`) to e4m3 in 128x128
 * blocks, bit for bit as flashinfer-rs's host quantiser (`cutlass::prepare::fp8_blocks`): each
 * block's scale is amax / 448 (1 for an all-zero block, at least the smallest positive f32),
 * each code e4m3(w / scale), nearest even, saturating; the codes into `codes` [experts, rows,
 * cols] and the scales into `scales` [experts, rows / 128, cols / 128] (f32), the layout of
 * DeepSeek-V3's `weight_scale_inv` that FI_CUTLASS_MOE_WEIGHTS_FP8_BLOCK layers take. rows and
 * cols must be positive multiples of 128, at most 2^31 - 1 blocks in all; weights, codes and
 * scales 16-byte aligned device memory of the current device; `nonfinite` one device int32,
 * which the call sets to 0 and then to nonzero if a weight is NaN or infinite (whose block's
 * codes and scale then mean nothing). Enqueued on `stream`: no allocation, no
 * synchronisation. */
fi_status fi_quantize_fp8_blocks(const void* weights, int64_t experts, int64_t rows, int64_t cols,
                                 void* codes, float* scales, int32_t* nonfinite, void* stream);

/** Quantises `experts` equal parts of `weights` (bf16, `per_expert` values each, a multiple of
 * 8) to e4m3 with one scale per expert, bit for bit as flashinfer-rs's host quantiser
 * (`cutlass::prepare::fp8_per_expert`): the expert's scale is amax / 448 (1 for an all-zero
 * expert, at least the smallest positive f32), each code e4m3(w / scale), nearest even,
 * saturating; the codes into `codes` [experts * per_expert] and the scales into `scales`
 * [experts] (f32: the per-expert weight scales of FI_CUTLASS_MOE_WEIGHTS_FP8 layers). experts
 * at most 65535; pointers and `nonfinite` as for fi_quantize_fp8_blocks. Enqueued on `stream`
 * (two memsets and three kernels; `scales` holds each expert's amax until the last): no
 * allocation, no synchronisation. */
fi_status fi_quantize_fp8_per_expert(const void* weights, int64_t experts, int64_t per_expert,
                                     void* codes, float* scales, int32_t* nonfinite,
                                     void* stream);

#ifdef __cplusplus
}
#endif

#endif /* FLASHINFER_RS_H */

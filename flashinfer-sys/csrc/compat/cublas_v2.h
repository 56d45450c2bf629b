/* flashinfer-rs compat header: stands in for cuBLAS's cublas_v2.h where the toolchain has none.
 *
 * The CUDA 13.0 compiler wheels from the package registry ship no cuBLAS headers, yet
 * FlashInfer 0.6.13's `cudaUtils.h` includes this header for two things only: the
 * `cublasStatus_t` enum (to print its names in an error helper) and, transitively,
 * <cuComplex.h>/<math.h>. No cuBLAS function is called and no object references a cuBLAS
 * symbol. This directory is searched *after* the toolkit's own include directory
 * (-idirafter), so a real cuBLAS header always wins when the toolkit has one.
 * Values are those of cuBLAS 13. */
#ifndef FLASHINFER_RS_COMPAT_CUBLAS_V2_H
#define FLASHINFER_RS_COMPAT_CUBLAS_V2_H
#include <cuComplex.h>
#include <cuda_runtime_api.h>
#include <math.h>

typedef enum {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_NOT_INITIALIZED = 1,
  CUBLAS_STATUS_ALLOC_FAILED = 3,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_ARCH_MISMATCH = 8,
  CUBLAS_STATUS_MAPPING_ERROR = 11,
  CUBLAS_STATUS_EXECUTION_FAILED = 13,
  CUBLAS_STATUS_INTERNAL_ERROR = 14,
  CUBLAS_STATUS_NOT_SUPPORTED = 15,
  CUBLAS_STATUS_LICENSE_ERROR = 16
} cublasStatus_t;

#endif

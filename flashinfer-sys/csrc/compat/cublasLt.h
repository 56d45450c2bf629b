/* flashinfer-rs compat header: see cublas_v2.h beside this file. FlashInfer 0.6.13 includes
 * cublasLt.h but uses nothing from it. */
#ifndef FLASHINFER_RS_COMPAT_CUBLASLT_H
#define FLASHINFER_RS_COMPAT_CUBLASLT_H
#include "cublas_v2.h"
#endif

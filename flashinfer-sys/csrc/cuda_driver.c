/* cuda_driver.c: the CUDA driver API functions upstream's code calls (the batched-GEMM runner
 * of the Blackwell MoE loads its cubins and launches them), resolved from libcuda.so.1 at
 * first use. In every sm100 build; linked only where something references them.
 *
 * Why: the CUDA compiler wheels have no libcuda stub to link against, and linking the real
 * driver library would tie every binary (and CI, which has no GPU) to its presence. Like
 * cudarc, we load the driver at run time instead; a process without one gets
 * CUDA_ERROR_NOT_INITIALIZED from these calls, never a load failure. Each forwarder has the
 * exact signature of its declaration in <cuda.h>, which the compiler checks. */
#include <cuda.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>

static struct {
  CUresult (*cuCtxGetCurrent)(CUcontext*);
  CUresult (*cuCtxGetId)(CUcontext, unsigned long long*);
  CUresult (*cuFuncSetAttribute)(CUfunction, CUfunction_attribute, int);
  CUresult (*cuGetErrorString)(CUresult, const char**);
  CUresult (*cuLaunchKernelEx)(const CUlaunchConfig*, CUfunction, void**, void**);
  CUresult (*cuModuleGetFunction)(CUfunction*, CUmodule, const char*);
  CUresult (*cuModuleLoadData)(CUmodule*, const void*);
  CUresult (*cuModuleUnload)(CUmodule);
  CUresult (*cuTensorMapEncodeTiled)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                     const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                     const cuuint32_t*, CUtensorMapInterleave,
                                     CUtensorMapSwizzle, CUtensorMapL2promotion,
                                     CUtensorMapFloatOOBfill);
} driver;

static pthread_once_t driver_once = PTHREAD_ONCE_INIT;

static void load_driver(void) {
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == NULL) return; /* every forwarder then answers CUDA_ERROR_NOT_INITIALIZED */
#define FI_LOAD(name) *(void**)(&driver.name) = dlsym(lib, #name)
  FI_LOAD(cuCtxGetCurrent);
  FI_LOAD(cuCtxGetId);
  FI_LOAD(cuFuncSetAttribute);
  FI_LOAD(cuGetErrorString);
  FI_LOAD(cuLaunchKernelEx);
  FI_LOAD(cuModuleGetFunction);
  FI_LOAD(cuModuleLoadData);
  FI_LOAD(cuModuleUnload);
  FI_LOAD(cuTensorMapEncodeTiled);
#undef FI_LOAD
}

#define FI_FORWARD(name, ...)                                  \
  pthread_once(&driver_once, load_driver);                     \
  if (driver.name == NULL) return CUDA_ERROR_NOT_INITIALIZED;  \
  return driver.name(__VA_ARGS__)

CUresult cuCtxGetCurrent(CUcontext* pctx) { FI_FORWARD(cuCtxGetCurrent, pctx); }

CUresult cuCtxGetId(CUcontext ctx, unsigned long long* ctxId) {
  FI_FORWARD(cuCtxGetId, ctx, ctxId);
}

CUresult cuFuncSetAttribute(CUfunction hfunc, CUfunction_attribute attrib, int value) {
  FI_FORWARD(cuFuncSetAttribute, hfunc, attrib, value);
}

CUresult cuGetErrorString(CUresult error, const char** pStr) {
  FI_FORWARD(cuGetErrorString, error, pStr);
}

CUresult cuLaunchKernelEx(const CUlaunchConfig* config, CUfunction f, void** kernelParams,
                          void** extra) {
  FI_FORWARD(cuLaunchKernelEx, config, f, kernelParams, extra);
}

CUresult cuModuleGetFunction(CUfunction* hfunc, CUmodule hmod, const char* name) {
  FI_FORWARD(cuModuleGetFunction, hfunc, hmod, name);
}

CUresult cuModuleLoadData(CUmodule* module, const void* image) {
  FI_FORWARD(cuModuleLoadData, module, image);
}

CUresult cuModuleUnload(CUmodule hmod) { FI_FORWARD(cuModuleUnload, hmod); }

CUresult cuTensorMapEncodeTiled(CUtensorMap* tensorMap, CUtensorMapDataType tensorDataType,
                                cuuint32_t tensorRank, void* globalAddress,
                                const cuuint64_t* globalDim, const cuuint64_t* globalStrides,
                                const cuuint32_t* boxDim, const cuuint32_t* elementStrides,
                                CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle,
                                CUtensorMapL2promotion l2Promotion,
                                CUtensorMapFloatOOBfill oobFill) {
  FI_FORWARD(cuTensorMapEncodeTiled, tensorMap, tensorDataType, tensorRank, globalAddress,
             globalDim, globalStrides, boxDim, elementStrides, interleave, swizzle, l2Promotion,
             oobFill);
}

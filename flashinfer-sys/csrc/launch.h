// launch.h: the one door through which our kernels are launched, and the device side of
// programmatic dependent launch (PDL).
//
// Every launch of ours goes through fi::launch (cudaLaunchKernelEx): a refused launch is a
// typed fi::Failure naming the launch and keeping its cudaError_t, the runtime's last error is
// cleared so that no later check (ours or upstream's) reports it again, and PDL is one flag of
// the launch's shape rather than an attribute built at each site.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "status.h"

namespace fi {

// Grid, block and dynamic shared memory of a launch. `dependent`: launched with programmatic
// dependent launch, the grid may start while the stream's previous kernel drains; the kernel
// then calls wait_for_prior_grid() before it reads or writes anything that kernel may touch.
// After anything but a kernel, or when false, the grid starts once the stream's earlier work
// has ended.
struct LaunchShape {
  dim3 grid;
  dim3 block;
  size_t shared_bytes = 0;
  bool dependent = false;
};

// Launches kernel(args...) on `stream`. `what` must be a string literal (kept, not copied).
template <typename... Params, typename... Args>
void launch(const char* what, void (*kernel)(Params...), const LaunchShape& shape,
            cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = shape.grid;
  config.blockDim = shape.block;
  config.dynamicSmemBytes = shape.shared_bytes;
  config.stream = stream;
  cudaLaunchAttribute pdl{};
  pdl.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  pdl.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &pdl;
  config.numAttrs = shape.dependent ? 1 : 0;
  const cudaError_t err = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // reported here, with this launch's name
    check_cuda(err, what);
  }
}

#ifdef __CUDACC__
// Waits until the grids this one depends on (launched before it on its stream) have ended and
// their writes are visible; returns at once for a grid launched without `dependent`.
__device__ __forceinline__ void wait_for_prior_grid() {
  asm volatile("griddepcontrol.wait;" ::: "memory");
}

// Lets the stream's next grid, if launched `dependent`, be scheduled before this one ends (it
// still waits for this grid's end in its own wait_for_prior_grid()).
__device__ __forceinline__ void let_dependents_start() {
  asm volatile("griddepcontrol.launch_dependents;");
}
#endif

}  // namespace fi

"""Runs FlashInfer's CUTLASS MoE GEMM generator from the pinned flashinfer-python wheel.

    python3 generate.py <wheel> <output dir>

The generator (flashinfer/jit/gemm/cutlass/generate_kernels.py and the CUTLASS python library
it imports) is extracted from the wheel into a scratch directory and called as upstream's
gen_cutlass_fused_moe_sm90_module calls it (arch "90;90-real"). Importing the `flashinfer`
package itself would import torch, so the three packages above the generator are stand-ins,
and so is the one toolchain query it makes (the pinned nvcc is CUDA 13.0).
"""
import sys
import tempfile
import types
import zipfile
from pathlib import Path


def main(wheel: str, out: str) -> None:
    scratch = Path(tempfile.mkdtemp())
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith(("flashinfer/jit/gemm/cutlass/", "flashinfer/data/cutlass/python/")):
                z.extract(name, scratch)
    sys.path.insert(0, str(scratch))
    for pkg in ["flashinfer", "flashinfer.jit", "flashinfer.jit.gemm"]:
        m = types.ModuleType(pkg)
        m.__path__ = [str(scratch / pkg.replace(".", "/"))]
        sys.modules[pkg] = m
    cpp_ext = types.ModuleType("flashinfer.jit.cpp_ext")
    cpp_ext.is_cuda_version_at_least = lambda version: True
    sys.modules["flashinfer.jit.cpp_ext"] = cpp_ext
    from flashinfer.jit.gemm.cutlass.generate_kernels import generate_gemm_operations

    generate_gemm_operations(out, "90;90-real")
    print(f"{sum(1 for _ in Path(out).rglob('*.generated.cu'))} generated files in {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

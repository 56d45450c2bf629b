# Sourced on a GPU machine by the packs whose binaries link candle (gpu-pack-candle.sh,
# gpu-pack-serve.sh copy it into the pack): candle loads the CUDA 13 libraries it uses
# (cuBLAS, cuBLASLt, cuRAND, NVRTC, the runtime) by SONAME; the GPU machines have them in
# PyTorch's nvidia-* wheels, which this puts on LD_LIBRARY_PATH.
libs=$(python3 - <<'PY'
import glob, os, site
dirs = set()
for sp in site.getsitepackages():
    for pat in ("libcublas.so.*", "libcublasLt.so.*", "libcurand.so.*", "libnvrtc.so.*",
                "libcudart.so.*"):
        for f in glob.glob(os.path.join(sp, "nvidia", "**", pat), recursive=True):
            dirs.add(os.path.dirname(f))
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

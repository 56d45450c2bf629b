# Sourced (not run) by the scripts that build candle with CUDA on this GPU-less machine
# (scripts/candle-check.sh, scripts/gpu-pack-serve.sh): nvcc on PATH for candle-kernels, and
# link-time stand-ins for the CUDA libraries candle links (downstream/candle/make_link_stubs.py;
# at run time the real libraries are loaded by SONAME). Expects $root (the repository).
python3 "$root/flashinfer-sys/vendor/fetch.py" all
eval "$(python3 "$root/flashinfer-sys/vendor/fetch.py" print-env)"
# candle-kernels compiles its PTX with the nvcc on PATH, for this compute capability.
export PATH="$FLASHINFER_RS_CUDA_HOME/bin:$PATH"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
# candle-kernels' build (cudaforge) compiles on half the cores by default: one file at a time on
# a 2-core CI machine, a 15-minute single-core chain. All of them.
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-$(nproc)}
export CARGO_TARGET_DIR=${CANDLE_CHECK_TARGET_DIR:-$root/target/candle-check}
stubs=$CARGO_TARGET_DIR/link-stubs
(cd "$root/downstream/candle" && python3 make_link_stubs.py "$stubs")
# candle-kernels links the CUDA runtime by name: the toolchain's own (SONAME libcudart.so.13).
ln -sf "$FLASHINFER_RS_CUDA_HOME/lib/libcudart.so.13" "$stubs/libcudart.so"
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$stubs"

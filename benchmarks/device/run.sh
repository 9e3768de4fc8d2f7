#!/usr/bin/env bash
# Run ON THE DEVICE (see pack.sh and README.md here), one stage per call — a call may run at most 10 minutes:
#   bash benchmarks/device/run.sh cuda-tests   the CUDA test classes: every kernel and the fixtures' parity on CUDA
#   bash benchmarks/device/run.sh tests        the whole suite (CPU classes too)
#   bash benchmarks/device/run.sh gpu          kernels and stages at LSUN-256 shapes (CUDA events, % of peak)
#   bash benchmarks/device/run.sh peer         the PyTorch peer of `gpu`, same device (fp32, TF32, fp16)
#   bash benchmarks/device/run.sh memory       lean vs materialised at the Bedroom-28 shape, 40 images
#   bash benchmarks/device/run.sh ptx          ptxas -v (registers, spills, shared memory) of the tiled, tensor-core and
#                                              flash kernels as ILGPU emits them, for sm_90
#   bash benchmarks/device/run.sh precision    LSUN-256 features with fp16 operands (the mma.sync kernel) against fp32
# Results go to $OUT (device, driver and commit first).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
# Unpacked inside the checkout: the tests find the repository (tests/fixtures, weights/) above their binaries.
[ -x publish/tests/IlgpuDiffSeg.Tests ] || tar -C publish -xJf publish/tests.tar.xz
[ -x publish/bench/IlgpuDiffSeg.Benchmarks ] || tar -C publish -xJf publish/bench.tar.xz
export DIFFSEG_FIXTURES=$PWD/shared/fixtures DIFFSEG_REPO=$PWD
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; git rev-parse --short HEAD 2>/dev/null; } \
    | tee "$OUT/device.txt"

case "${1:-cuda-tests}" in
  cuda-tests)
    timeout 560 publish/tests/IlgpuDiffSeg.Tests -parallelMode none -noColor -class "*Cuda" > "$OUT/tests-cuda.log" 2>&1
    tail -5 "$OUT/tests-cuda.log" ;;
  tests)
    timeout 560 publish/tests/IlgpuDiffSeg.Tests -parallelMode none -noColor > "$OUT/tests.log" 2>&1
    tail -5 "$OUT/tests.log" ;;
  gpu)
    timeout 560 publish/bench/IlgpuDiffSeg.Benchmarks gpu --out "$OUT/gpu.md" > /dev/null 2> "$OUT/gpu.log"
    cat "$OUT/gpu.md" ;;
  peer)
    PYTHONUNBUFFERED=1 timeout 560 python3 benchmarks/torch_peer.py --out "$OUT/torch_peer.json" 2> "$OUT/torch_peer.log" > /dev/null
    cat "$OUT/torch_peer.log" ;;
  ptx)
    export PATH="$PATH:/usr/local/cuda/bin"
    DIFFSEG_DUMP_PTX="$OUT/ptx" publish/tests/IlgpuDiffSeg.Tests -parallelMode none -noColor -class "*PtxCompileTests" > "$OUT/ptx-tests.log" 2>&1
    tail -3 "$OUT/ptx-tests.log"
    for f in "$OUT"/ptx/*.ptx; do
      echo "== $(basename "$f")"; ptxas -arch=sm_90 -v -o /dev/null "$f" 2>&1 | grep -E "registers|spill|error" | sed 's/^ptxas info *: //'
    done | tee "$OUT/ptxas.txt" ;;
  precision)
    timeout 560 publish/bench/IlgpuDiffSeg.Benchmarks precision --out "$OUT/precision.md" > /dev/null 2> "$OUT/precision.log"
    cat "$OUT/precision.md" ;;
  memory)
    timeout 560 publish/bench/IlgpuDiffSeg.Benchmarks memory bedroom28 40 cuda --out "$OUT/memory-bedroom28.md" > /dev/null 2>&1
    cat "$OUT/memory-bedroom28.md" ;;
  *) echo "unknown stage '$1'"; exit 2 ;;
esac

#!/usr/bin/env bash
# Run ON THE DEVICE (see pack.sh and README.md here). A task is lent 15 minutes of device time in all, a machine's start
# included, and a call may run 10: so the default stage, `all`, does the whole job in one call of at most 9 minutes.
#   bash benchmarks/device/run.sh all          cuda-tests, ptx, gpu and peer back to back under one deadline, then
#                                              precision and memory while time remains; everything in $OUT/results.tar.gz
#                                              (under the 8-file limit on what comes back) and a summary on stdout
# or one stage alone:
#   bash benchmarks/device/run.sh cuda-tests   the CUDA test classes: every kernel and the fixtures' parity on CUDA
#   bash benchmarks/device/run.sh tests        the whole suite (CPU classes too)
#   bash benchmarks/device/run.sh gpu          kernels and stages at LSUN-256 shapes (CUDA events, % of peak)
#   bash benchmarks/device/run.sh peer         the PyTorch peer of `gpu`, same device (fp32, TF32, fp16)
#   bash benchmarks/device/run.sh memory       lean vs materialised at the Bedroom-28 shape, 40 images
#   bash benchmarks/device/run.sh ptx          ptxas -v (registers, spills, shared memory) of the tiled, tensor-core and
#                                              flash kernels as ILGPU emits them, for sm_90
#   bash benchmarks/device/run.sh precision    LSUN-256 features with fp16 operands (the mma.sync kernel) against fp32
#   bash benchmarks/device/run.sh train        one LSUN-256 training step, batch 4, fp32 and fp16, ours and PyTorch's, with
#                                              peak device memory
# Results go to $OUT (device, driver and commit first).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
# Unpacked inside the checkout: the tests find the repository (tests/fixtures, weights/) above their binaries.
[ -x publish/tests/IlgpuDiffSeg.Tests ] || tar -C publish -xJf publish/device.tar.xz
# The benchmarks run from the test executable (one self-contained program travels: see pack.sh).
BENCH="publish/tests/IlgpuDiffSeg.Tests bench"
export DIFFSEG_FIXTURES=$PWD/tests/fixtures DIFFSEG_REPO=$PWD
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; echo "commit $(cat publish/tests/commit.txt 2>/dev/null)"; } \
    | tee "$OUT/device.txt"

# Seconds left before the `all` deadline; a stage runs only if its budget fits.
deadline=$((SECONDS + ${DIFFSEG_DEVICE_SECONDS:-540}))
fits() { [ $((deadline - SECONDS)) -ge "$1" ]; }

stage() {
  case "$1" in
  cuda-tests)
    timeout "${2:-560}" publish/tests/IlgpuDiffSeg.Tests -parallelMode none -noColor -class "*Cuda" > "$OUT/tests-cuda.log" 2>&1
    tail -5 "$OUT/tests-cuda.log"; grep -E "^failed " "$OUT/tests-cuda.log" | head -20 ;;
  tests)
    timeout "${2:-560}" publish/tests/IlgpuDiffSeg.Tests -parallelMode none -noColor > "$OUT/tests.log" 2>&1
    tail -5 "$OUT/tests.log" ;;
  gpu)
    timeout "${2:-560}" $BENCH gpu --out "$OUT/gpu.md" > /dev/null 2> "$OUT/gpu.log"
    cat "$OUT/gpu.md" 2>/dev/null || tail -20 "$OUT/gpu.log" ;;
  peer)
    PYTHONUNBUFFERED=1 timeout "${2:-560}" python3 benchmarks/torch_peer.py --out "$OUT/torch_peer.json" 2> "$OUT/torch_peer.log" > /dev/null
    cat "$OUT/torch_peer.log" ;;
  ptx)
    export PATH="$PATH:/usr/local/cuda/bin"
    # The PTX goes outside $OUT: only 8 files come back.
    DIFFSEG_DUMP_PTX=/tmp/diffseg-ptx timeout "${2:-120}" publish/tests/IlgpuDiffSeg.Tests -parallelMode none -noColor \
        -class "*PtxCompileTests" > "$OUT/ptx-tests.log" 2>&1
    tail -3 "$OUT/ptx-tests.log"
    for f in /tmp/diffseg-ptx/*.ptx; do
      echo "== $(basename "$f")"; ptxas -arch=sm_90 -v -o /dev/null "$f" 2>&1 | grep -E "registers|spill|error" | sed 's/^ptxas info *: //'
    done | tee "$OUT/ptxas.txt" ;;
  precision)
    timeout "${2:-560}" $BENCH precision --out "$OUT/precision.md" > /dev/null 2> "$OUT/precision.log"
    cat "$OUT/precision.md" ;;
  memory)
    timeout "${2:-560}" $BENCH memory bedroom28 40 cuda --out "$OUT/memory-bedroom28.md" > /dev/null 2>&1
    cat "$OUT/memory-bedroom28.md" ;;
  train)
    for precision in fp32 fp16; do
      timeout "${2:-300}" $BENCH train-step 4 2 "$precision" lsun256 2>> "$OUT/train.log" | tee -a "$OUT/train.txt"
      PYTHONUNBUFFERED=1 timeout "${2:-300}" python3 benchmarks/train_step_peer.py --config lsun256 --device cuda --batch 4 --reps 2 \
          $([ "$precision" = fp16 ] && echo --fp16) 2>> "$OUT/train.log" | tee -a "$OUT/train.txt"
    done ;;
  *) echo "unknown stage '$1'"; exit 2 ;;
  esac
}

case "${1:-all}" in
  all)
    # Budgets in seconds: correctness first, since nothing else is trustworthy before it; then the measurements that
    # must share one session (ours and the peer's); the rest only while time remains.
    for plan in cuda-tests:200 ptx:30 gpu:200 peer:120 precision:90 train:120 memory:150; do
      name=${plan%%:*} budget=${plan##*:}
      if fits "$budget"; then
        echo "### $name (budget ${budget}s, $((deadline - SECONDS))s left)"
        stage "$name" "$budget"
      else
        echo "### $name skipped: $((deadline - SECONDS))s left, budget ${budget}s" | tee -a "$OUT/skipped.txt"
      fi
    done
    (cd "$OUT" && tar -czf /tmp/results.tar.gz --exclude=results.tar.gz . && mv /tmp/results.tar.gz results.tar.gz \
        && find . -maxdepth 1 -type f ! -name results.tar.gz ! -name device.txt -delete)
    ls -la "$OUT" ;;
  *) stage "$1" ;;
esac
exit 0

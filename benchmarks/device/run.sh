#!/usr/bin/env bash
# Run ON THE DEVICE (see pack.sh): what the GPU is needed for, in one call, results under $OUT.
#   1. the device, driver and ILGPU's view of it;
#   2. the whole test suite (CUDA test classes run; the CPU ones too) — parity on CUDA;
#   3. the GPU kernel/stage benchmark and its PyTorch peer, same device, same session;
#   4. the memory benchmark at the Bedroom-28 shape.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/dev
tar -C /tmp/dev -xJf publish/tests.tar.xz
tar -C /tmp/dev -xJf publish/bench.tar.xz
export DIFFSEG_FIXTURES=$PWD/shared/fixtures
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/device.txt"
git rev-parse --short HEAD >> "$OUT/device.txt" 2>/dev/null || true

echo "== tests (CUDA and CPU) =="
(cd "$PWD" && timeout 1500 /tmp/dev/tests/IlgpuDiffSeg.Tests -parallel none 2>&1 | tail -400) > "$OUT/tests.log"
tail -5 "$OUT/tests.log"

echo "== kernels and stages =="
timeout 900 /tmp/dev/bench/IlgpuDiffSeg.Benchmarks gpu --out "$OUT/gpu.md" > /dev/null 2> "$OUT/gpu.log"
PYTHONUNBUFFERED=1 timeout 900 python3 benchmarks/torch_peer.py --out "$OUT/torch_peer.json" 2> "$OUT/torch_peer.log" > /dev/null
cat "$OUT/gpu.md"; cat "$OUT/torch_peer.log"

echo "== memory, Bedroom-28 shape =="
timeout 1200 /tmp/dev/bench/IlgpuDiffSeg.Benchmarks memory bedroom28 40 cuda --out "$OUT/memory-bedroom28.md" > /dev/null 2>&1
cat "$OUT/memory-bedroom28.md"

#!/usr/bin/env bash
# The CPU backend against the official guided-diffusion code on PyTorch (benchmarks/train_step_peer.py), in the same run,
# on the same cores and thread count (nproc): the LSUN-256 UNet forward at batch 1, the demo ADM's forward at batch 16 and
# its training step at batch 16. Prints each pair with the load average before it and the ratio (< 1: IlgpuDiffSeg is
# faster). The machine's load matters: results in benchmarks/results/cpu-backend.md state it.
#   bash benchmarks/cpu_ratio.sh [/path/to/guided-diffusion] [reps] [all|lsun|forward|train]
set -euo pipefail
cd "$(dirname "$0")/.."
gd=${1:-}; reps=${2:-3}; which=${3:-all}
dotnet build benchmarks/IlgpuDiffSeg.Benchmarks -c Release -v q > /dev/null
ours() { dotnet benchmarks/IlgpuDiffSeg.Benchmarks/bin/Release/net10.0/IlgpuDiffSeg.Benchmarks.dll "$@" 2> /dev/null | tail -1; }
peer() { /usr/bin/python3 benchmarks/train_step_peer.py ${gd:+--guided-diffusion "$gd"} --threads "$(nproc)" "$@" 2> /dev/null | tail -1; }
seconds() { sed -E 's/.*: ([0-9.]+) s per (pass|step).*/\1/'; }
pair() {
    local name=$1; shift
    local a b
    echo "== $name (load before: $(cut -d' ' -f1-3 /proc/loadavg))"
    a=$(ours "$@"); echo "$a"
    echo "   (load before the peer: $(cut -d' ' -f1-3 /proc/loadavg))"
    b=$(peer "${PEER[@]}"); echo "$b"
    echo "ratio (IlgpuDiffSeg / PyTorch): $(awk -v a="$(echo "$a" | seconds)" -v b="$(echo "$b" | seconds)" 'BEGIN { printf "%.2f", a / b }')"
}
if [[ $which == all || $which == lsun ]]; then
    PEER=(--config lsun256 --forward --batch 1 --reps 1); pair "LSUN-256 forward, batch 1" forward 1 1
fi
if [[ $which == all || $which == forward ]]; then
    PEER=(--config demo --forward --batch 16 --reps "$reps"); pair "demo forward, batch 16" forward 16 "$reps" demo
fi
if [[ $which == all || $which == train ]]; then
    PEER=(--config demo --batch 16 --reps "$reps"); pair "demo training step, batch 16" train-step 16 "$reps"
fi

#!/usr/bin/env bash
# One training step of the demo ADM at 64², batch 16: IlgpuDiffSeg's CPU backend against the official guided-diffusion
# code on PyTorch, in the same run, on the same cores, and the ratio (< 1: IlgpuDiffSeg is faster).
#   bash benchmarks/train_step_ratio.sh [/path/to/guided-diffusion] [batch] [reps]
set -euo pipefail
cd "$(dirname "$0")/.."
gd=${1:-}; batch=${2:-16}; reps=${3:-3}
ours=$(dotnet run --project benchmarks/IlgpuDiffSeg.Benchmarks -c Release -- train-step "$batch" "$reps" | tail -1)
peer=$(/usr/bin/python3 benchmarks/train_step_peer.py ${gd:+--guided-diffusion "$gd"} --batch "$batch" --reps "$reps" \
    --threads "$(nproc)" | tail -1)
echo "$ours"
echo "$peer"
a=$(echo "$ours" | sed -E 's/.*: ([0-9.]+) s per step.*/\1/'); b=$(echo "$peer" | sed -E 's/.*: ([0-9.]+) s per step.*/\1/')
echo "ratio (IlgpuDiffSeg / PyTorch): $(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", a / b }')"

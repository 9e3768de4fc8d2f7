#!/usr/bin/env bash
# Coverage-guided fuzzing of one reader with AFL++ through SharpFuzz (tests/IlgpuDiffSeg.Fuzz/Targets.cs).
#
#   bash tests/IlgpuDiffSeg.Fuzz/fuzz.sh TARGET [SECONDS]        TARGET: npy pt safetensors image mask flags config
#
# Needs afl-fuzz (Debian/Ubuntu: apt-get install afl++) and the SharpFuzz instrumenter
# (dotnet tool install --tool-path .tools SharpFuzz.CommandLine --version 2.3.0; found on PATH or in .tools/).
# Seeds are the target's ok_* files in tests/fixtures/hostile; every crash or hang AFL finds is copied back there as
# crash_<target>_<date>_<n> (rename it crash_bad_<what> once the reader refuses it; HostileCorpusTests replays them all). The target
# process's managed heap is capped at 1 GiB, so an input that makes a reader allocate past its limits is a crash, not a
# machine out of memory. Without AFL the same targets run in CI as CsCheck mutation (ReaderPropertyTests).
set -euo pipefail
target=${1:?usage: fuzz.sh TARGET [SECONDS]}
seconds=${2:-60}
root=$(cd "$(dirname "$0")/../.." && pwd)
case $target in
  npy|pt|safetensors|image|mask|flags|config) ;;
  *) echo "unknown target $target" >&2; exit 2 ;;
esac
ext=$(case $target in npy) echo .npy;; pt) echo .pt;; safetensors) echo .safetensors;; image|mask) echo .png;; *) echo .json;; esac)
sharpfuzz=$(command -v sharpfuzz || echo "$root/.tools/sharpfuzz")
work=$(mktemp -d "/tmp/diffseg-afl-$target.XXXXXX")
dotnet publish "$root/tests/IlgpuDiffSeg.Fuzz" -c Release -o "$work/bin" > "$work/publish.log"
# Instrument the readers (and the image decoder for the image targets) so AFL sees their branches.
"$sharpfuzz" "$work/bin/IlgpuDiffSeg.dll"
if [[ $target == image || $target == mask ]]; then "$sharpfuzz" "$work/bin/SixLabors.ImageSharp.dll"; fi
mkdir -p "$work/in"
cp "$root"/tests/fixtures/hostile/"$target"/ok_*"$ext" "$work/in/"
export AFL_SKIP_BIN_CHECK=1 AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export DOTNET_GCHeapHardLimit=0x40000000 DOTNET_TieredPGO=0
afl-fuzz -V "$seconds" -i "$work/in" -o "$work/out" -t 10000 -m none -- "$work/bin/IlgpuDiffSeg.Fuzz" afl "$target" \
  > "$work/afl.log" 2>&1 || { tail -20 "$work/afl.log"; exit 1; }
stats="$work/out/default/fuzzer_stats"
echo "$target: $(grep -E '^(execs_done|corpus_count|saved_crashes|saved_hangs)' "$stats" | tr -s ' ' | tr '\n' ' ')"
n=0
for f in "$work"/out/default/crashes/id* "$work"/out/default/hangs/id*; do
  [[ -e $f ]] || continue
  n=$((n + 1))
  cp "$f" "$root/tests/fixtures/hostile/$target/crash_${target}_$(date +%Y%m%d)_$n$ext"
done
echo "$target: $n findings copied to tests/fixtures/hostile/$target (work folder $work)"

#!/usr/bin/env bash
# Static check of the hot GPU kernels without a GPU: dumps their PTX (the PtxCompileTests, DIFFSEG_DUMP_PTX), assembles
# it for sm_90 with ptxas from Debian's nvidia-cuda-toolkit (CUDA 11.8, unpacked under /tmp, not installed), and prints
# registers, spills, shared memory and the instruction mix of every loop of the SASS (sass_mix.py).
#   bash benchmarks/ptx/sass-mix.sh [OUT_DIR]        (default /tmp/diffseg-sass)
# Needs the .NET SDK and network access to Debian's archive (non-free component) the first time. ILGPU writes
# `.version 8.5`; CUDA 11.8's ptxas reads up to 7.8, and the kernels use nothing newer, so the version line is lowered.
# This is for reading kernels (how many instructions a K slice costs, whether a loop is unrolled, what became a branch);
# speed is only ever measured on a GPU (benchmarks/device).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-/tmp/diffseg-sass}
tk=/tmp/diffseg-cuda-toolkit
if [ ! -x "$tk/usr/bin/ptxas" ]; then
  list=/etc/apt/sources.list.d/diffseg-nonfree.sources
  if ! apt-cache policy nvidia-cuda-toolkit 2>/dev/null | grep -q Candidate:.*[0-9]; then
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: non-free contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' > "$list"
    apt-get update -qq
  fi
  mkdir -p "$tk" && (cd "$tk" && apt-get download -qq nvidia-cuda-toolkit 2>/dev/null && dpkg -x nvidia-cuda-toolkit_*.deb . && rm -f ./*.deb)
fi
rm -rf "$out" && mkdir -p "$out"
dotnet build tests/IlgpuDiffSeg.Tests -c Release -v q -nologo > /dev/null
DIFFSEG_DUMP_PTX="$out" dotnet test tests/IlgpuDiffSeg.Tests -c Release --no-build -- --filter-class "*PtxCompileTests" > "$out/tests.log" 2>&1 \
  || { tail -20 "$out/tests.log"; exit 1; }
for f in "$out"/*.ptx; do
  k=$(basename "$f" .ptx)
  sed -i 's/^\.version 8\.[0-9]*/.version 7.8/' "$f"
  echo "== $k: $("$tk/usr/bin/ptxas" -arch=sm_90 -v -o "$out/$k.cubin" "$f" 2>&1 | grep -E "registers|spill|error" | sed 's/^ptxas info *: //' | tr -s ' \n' ' ')"
  "$tk/usr/bin/cuobjdump" -sass "$out/$k.cubin" > "$out/$k.sass"
  python3 benchmarks/ptx/sass_mix.py "$out/$k.sass"
done

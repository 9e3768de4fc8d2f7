#!/usr/bin/env bash
# Run HERE (the machine with the .NET SDK) before a device call: publishes the test executable — which also runs the
# benchmarks (`IlgpuDiffSeg.Tests bench ...`, tests/IlgpuDiffSeg.Tests/EntryPoint.cs) — self-contained for linux-x64 into
# one compressed archive under publish/ (git-ignored, carried); the fixtures travel with the checkout (tests/fixtures).
# Then call the device with
#   carry: ["publish/device.tar.xz"], command: "bash benchmarks/device/run.sh all", timeout_s: 590
# What travels (the tracked tree plus the carried archive) is capped at 64 MiB: one program means one runtime, and the
# archive leaves out what the device run never loads (listed below; checked by running the unpacked program here).
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf publish/tests publish/bench publish/device.tar.xz
dotnet publish tests/IlgpuDiffSeg.Tests -c Release -p:PublishForDevice=true -o publish/tests
# The checkout travels without .git: the commit rides along for the results' headers.
git rev-parse --short HEAD > publish/tests/commit.txt
git diff --quiet HEAD || echo "(with uncommitted changes)" >> publish/tests/commit.txt
# Never loaded on the device: BenchmarkDotNet and its dependencies (only the CPU `host` benchmarks use them), the
# runtime's debugger and tracing libraries, the standalone and experimental garbage collectors.
(cd publish/tests && rm -f libcapstone.so Microsoft.CodeAnalysis*.dll Microsoft.Diagnostics.*.dll Iced.dll BenchmarkDotNet*.dll \
    Perfolizer.dll Pragmastat.dll IlgpuDiffSeg.Benchmarks IlgpuDiffSeg.Benchmarks.runtimeconfig.json Gee.External.Capstone.dll CommandLine.dll Microsoft.DotNet.PlatformAbstractions.dll \
    libmscordaccore.so libmscordbi.so libclrgc.so libclrgcexp.so libcoreclrtraceptprovider.so)
tar -C publish -cf - tests | xz -9 -T0 > publish/device.tar.xz
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
carry=$(stat -c %s publish/device.tar.xz)
awk -v t="$tree" -v c="$carry" 'BEGIN { printf "travels: tree %.1f MiB + archive %.1f MiB = %.1f MiB of 64\n", t/1048576, c/1048576, (t+c)/1048576;
    if (t + c > 62 * 1048576) print "WARNING: within 2 MiB of the 64 MiB cap" }'

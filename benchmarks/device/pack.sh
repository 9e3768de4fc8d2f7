#!/usr/bin/env bash
# Run HERE (the machine with the .NET SDK) before a device call: publishes the test suite and the benchmarks as
# self-contained linux-x64 programs, compressed under publish/ (git-ignored, carried); the fixtures travel with the
# checkout (tests/fixtures). Then call the device with
#   carry: ["publish/tests.tar.xz", "publish/bench.tar.xz"], command: "bash benchmarks/device/run.sh all", timeout_s: 590
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf publish/tests publish/bench
dotnet publish tests/IlgpuDiffSeg.Tests -c Release -p:PublishForDevice=true -o publish/tests
dotnet publish benchmarks/IlgpuDiffSeg.Benchmarks -c Release -p:PublishForDevice=true -o publish/bench
# The checkout travels without .git: the commit rides along for the results' headers.
git rev-parse --short HEAD > publish/bench/commit.txt
git diff --quiet HEAD || echo "(with uncommitted changes)" >> publish/bench/commit.txt
tar -C publish -cJf publish/tests.tar.xz tests
tar -C publish -cJf publish/bench.tar.xz bench
du -ch publish/*.tar.xz tests/fixtures | tail -1

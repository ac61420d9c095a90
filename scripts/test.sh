#!/usr/bin/env bash
# The second of cinder's two commands: runs the whole test suite. Works on a fresh clone of a
# fresh machine: installs the packages, fetches the default model, builds twice (normal, and
# with AddressSanitizer + UBSan for the tests labelled "sanitize") and runs ctest in both.
#
#   scripts/test.sh               # everything
#   scripts/test.sh -R gguf       # extra arguments go to both ctest runs
set -euo pipefail
cd "$(dirname "$0")/.."

jobs=$(nproc 2>/dev/null || echo 2)

scripts/install-deps.sh
scripts/fetch-model.sh >/dev/null
scripts/fetch-test-data.sh >/dev/null

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo ${CINDER_CMAKE_FLAGS:-}
cmake --build build -j "$jobs"
(cd build && ctest --output-on-failure -j "$jobs" "$@")

# The parsers again under the sanitizers: any out-of-bounds read or UB fails the run.
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCINDER_SANITIZE=ON -DCINDER_CUDA=OFF \
  ${CINDER_CMAKE_FLAGS:-}
cmake --build build-asan -j "$jobs"
# Cluster tests there run the ASan coordinator with the optimized worker (tests/cluster/cluster.py).
(cd build-asan && CINDER_WORKER_BIN="$PWD/../build/cinder-worker" ASAN_OPTIONS=detect_leaks=1 \
    ctest --output-on-failure -j "$jobs" -L sanitize "$@")
echo "test: all passed"

#!/usr/bin/env bash
# The first of cinder's two commands: installs what is needed, builds, fetches the default
# model and shows it working (inspect, a chat prompt tokenized, then answered).
#
#   scripts/setup.sh              # build in ./build, model in ~/.cache/cinder
#   BUILD_DIR=out CINDER_CACHE=/data scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

build=${BUILD_DIR:-build}
jobs=$(nproc 2>/dev/null || echo 2)

scripts/install-deps.sh
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo ${CINDER_CMAKE_FLAGS:-}
cmake --build "$build" -j "$jobs"
model=$(scripts/fetch-model.sh)

echo
echo "== $build/cinder inspect --model $model"
"$build/cinder" inspect --model "$model"
echo
echo "== $build/cinder tokenize --model $model --chat \"What is the capital of France?\""
"$build/cinder" tokenize --model "$model" --chat "What is the capital of France?"
echo
echo "== $build/cinder generate --model $model --chat --prompt \"What is the capital of France?\" --temperature 0"
"$build/cinder" generate --model "$model" --chat --prompt "What is the capital of France?" --temperature 0
echo
echo "setup: done. The binaries are in $build/; run the tests with scripts/test.sh"

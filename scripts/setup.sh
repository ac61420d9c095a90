#!/usr/bin/env bash
# The first of cinder's two commands: installs what is needed, builds, fetches the default
# model and shows it working (inspect, a chat prompt tokenized, answered in this process, then
# answered by a local cluster: coordinator + mpirun worker).
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
# A local cluster (coordinator + one mpirun worker group) answering a real request.
listen=${CINDER_LISTEN:-tcp://127.0.0.1:5555} control=${CINDER_CONTROL:-tcp://127.0.0.1:5556}
echo "== deploy/local-cluster.sh --model $model --listen $listen --control $control"
out=$(mktemp)
deploy/local-cluster.sh --model "$model" --build "$build" --listen "$listen" --control "$control" >"$out" &
cluster=$!
trap 'kill -TERM $cluster 2>/dev/null; wait $cluster 2>/dev/null; rm -f "$out"' EXIT
while [ ! -s "$out" ]; do
    kill -0 $cluster 2>/dev/null || { echo "setup: the local cluster did not start" >&2; exit 1; }
    sleep 0.5
done
echo "== $build/cinder generate --server $listen --chat --prompt \"What is the capital of France?\" --temperature 0"
"$build/cinder" generate --server "$listen" --chat --prompt "What is the capital of France?" --temperature 0
"$build/cinder" status --server "$listen"
kill -TERM $cluster
wait $cluster 2>/dev/null || true
trap - EXIT
rm -f "$out"
echo
echo "setup: done. The binaries are in $build/; deploy/local-cluster.sh --model $model starts a"
echo "cluster (docs/serving.md); run the tests with scripts/test.sh"

#!/usr/bin/env bash
# llamacpp.sh - llama.cpp's figures on the same GGUF, on this machine, for docs/performance.md.
#
# Only Debian packages and PyPI are reachable from the build machines, so llama.cpp's source
# comes from the PyPI sdist of llama-cpp-python, which vendors it (vendor/llama.cpp). The
# version is pinned; the tarball, the source and the build are cached under
# ~/.cache/cinder/llamacpp (CINDER_LLAMACPP_DIR). Then it runs, on the CPU only:
#   llama-bench          pp512 and tg128 at 1 and 2 threads (THREADS)
#   llama-batched-bench  128-token prompts then 128 decode steps over 32 parallel sequences
#                        (-npl 32): the aggregate decode rate is the S_TG column
#
#   bench/llamacpp.sh [MODEL]        default: ~/.cache/cinder/SmolLM2-135M-Instruct.Q4_1.gguf
#   THREADS="1 2" REPS=3 bench/llamacpp.sh
#   PAIRED=10 bench/llamacpp.sh      instead: 10 paired rounds of batched decode at 2 threads,
#                                    each llama-batched-bench (as below) then cinder's
#                                    `bench_engine --batched MODEL 2` (F16 KV; CINDER_BUILD,
#                                    default build/), straight after: per-round rates and
#                                    ratios, then the median ratio
#
# Needs cmake, a C++ compiler and pip (scripts/install-deps.sh installs them). Nothing here is
# part of the build or the tests.
set -euo pipefail

VERSION=0.3.36 # llama-cpp-python; its vendor/llama.cpp is what gets built
MODEL=${1:-$HOME/.cache/cinder/SmolLM2-135M-Instruct.Q4_1.gguf}
THREADS=${THREADS:-"1 2"}
REPS=${REPS:-3}
NPL=${NPL:-32}
DIR=${CINDER_LLAMACPP_DIR:-$HOME/.cache/cinder/llamacpp}
SRC=$DIR/llama_cpp_python-$VERSION/vendor/llama.cpp
BUILD=$DIR/build-$VERSION

[[ -f $MODEL ]] || { echo "no model at $MODEL (scripts/fetch-model.sh)" >&2; exit 1; }
mkdir -p "$DIR"

if [[ ! -f $DIR/llama_cpp_python-$VERSION.tar.gz ]]; then
    echo "== fetching llama-cpp-python $VERSION (sdist) from PyPI" >&2
    # the metadata step builds scikit-build-core in an isolated environment: a minute or two
    python3 -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$VERSION" \
        -d "$DIR"
fi
if [[ ! -f $SRC/CMakeLists.txt ]]; then
    tar -xzf "$DIR/llama_cpp_python-$VERSION.tar.gz" -C "$DIR"
fi
if [[ ! -x $BUILD/bin/llama-bench || ! -x $BUILD/bin/llama-batched-bench ]]; then
    echo "== building llama-bench and llama-batched-bench (native, Release, CPU only)" >&2
    cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CUDA=OFF \
        -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_APP=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
        -DLLAMA_BUILD_TOOLS=ON -DBUILD_SHARED_LIBS=OFF >"$DIR/cmake-$VERSION.log"
    cmake --build "$BUILD" -j"$(nproc)" --target llama-bench llama-batched-bench \
        >>"$DIR/cmake-$VERSION.log"
fi

batched() { # THREADS: llama-batched-bench's table
    "$BUILD/bin/llama-batched-bench" -m "$MODEL" -t "$1" -tb "$1" -c $((NPL * 256 + 256)) \
        -b 2048 -ub 512 -npp 128 -ntg 128 -npl "$NPL" -ngl 0 2>/dev/null
}

if [[ -n ${PAIRED:-} ]]; then
    engine=${CINDER_BUILD:-$(dirname "$0")/../build}/bench/bench_engine
    [[ -x $engine ]] || { echo "no $engine (build cinder first)" >&2; exit 1; }
    echo "== $PAIRED paired rounds, batched decode of $NPL sequences, 2 threads, F16 KV for cinder;" \
         "load: $(cut -d' ' -f1-3 /proc/loadavg)"
    ratios=()
    for i in $(seq "$PAIRED"); do
        l=$(batched 2 | awk -F'|' '/^\|[ ]*128/ {gsub(/ /, "", $9); print $9}')
        c=$("$engine" --batched "$MODEL" 2 2>&1 | awk '/ F16 / {print $(NF - 1)}')
        r=$(awk -v c="$c" -v l="$l" 'BEGIN {printf "%.2f", (l > 0 ? c / l : 0)}')
        ratios+=("$r")
        echo "round $i $(date -u +%H:%M:%S): llama.cpp $l, cinder $c tokens/s: ${r}x"
    done
    printf '%s\n' "${ratios[@]}" | sort -n | awk '{v[NR] = $1; if ($1 < 3) u++}
        END {m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
             printf "median %.2fx over %d rounds; %d under 3x\n", m, NR, u}'
    exit 0
fi

echo "== llama.cpp $(cd "$SRC" && git describe --tags 2>/dev/null || echo "vendored by llama-cpp-python $VERSION")" \
     "on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== model: $MODEL"
for t in $THREADS; do
    "$BUILD/bin/llama-bench" -m "$MODEL" -t "$t" -p 512 -n 128 -r "$REPS" -ngl 0 -o md
done
for t in $THREADS; do
    echo "== batched decode, $NPL sequences, $t thread(s) (S_TG t/s: aggregate decode rate)"
    batched "$t"
done

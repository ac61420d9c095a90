#!/usr/bin/env bash
# tests/gpu/run.sh - the one script for the GPU test machine (docs/testing.md, "GPU"):
# builds with CUDA (no MPI, no ZeroMQ), writes the test models, runs the GPU tests (ctest
# label "gpu"), the GPU benchmarks and PyTorch's SDPA beside them, the serving benchmark
# (bench/bench_serving.py: a coordinator and one `cinder-worker --device cuda` started without
# mpirun, continuous against static batching), then compute-sanitizer (memcheck, racecheck) on
# the op tests, then (time left, AVX-512 VNNI host) the CPU kernel tests and Q4_1 matmul
# timings on the host's AVX-512 level; prints a short table last. Within 8 minutes: every step
# has a timeout cut to what is left of the budget. Exit status 1 when anything failed.
#
#   tests/gpu/run.sh            (repository root or anywhere; $OUT, if set, gets the logs)
#   CINDER_GPU_JOBS=2 CINDER_GPU_SMALL=1 CINDER_GPU_BUDGET=3000 tests/gpu/run.sh
#                               a dry run on a build machine without a GPU (tiny models only;
#                               the GPU tests skip; the serving step runs a CPU worker)
#   CINDER_GPU_SERVE=0          leaves the serving parts out (built with ZeroMQ off)
#
# Debian packages the machine lacks (cJSON, PCRE2, pkgconf; ZeroMQ, protobuf-c, protoc-c and
# protoc for the serving parts) come from .gpu-debs/, and the Python wheels (pyzmq, protobuf)
# from .gpu-debs/wheels/, filled by tests/gpu/fetch-debs.sh on a build machine and carried
# along; they are unpacked under /tmp. The serving parts are built only when all of them work
# here (a C program linked against libzmq and libprotobuf-c runs, protoc-c and protoc run, the
# Python imports zmq and google.protobuf): else the GPU tests still run and the serving step
# says why it was skipped.
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
T0=$(date +%s)
BUDGET=${CINDER_GPU_BUDGET:-470} # seconds, leaving room under the 8-minute limit
B=${CINDER_GPU_BUILD:-build-gpu}
M=$ROOT/$B/gpu-models
L=$ROOT/$B/gpu-logs
RES=$ROOT/$B/gpu-results.tsv
mkdir -p "$M" "$L"
: > "$RES"
ROWS=()
FAILED=0

elapsed() { echo $(($(date +%s) - T0)); }
log() { echo "[run.sh $(elapsed)s] $*"; }
row() { ROWS+=("$1|$2|$3"); }
# left LIMIT: seconds a step may take, LIMIT at most, never past the budget (min 5)
left() {
    local l=$((BUDGET - $(elapsed)))
    [ "$l" -gt "$1" ] && l=$1
    [ "$l" -lt 5 ] && l=5
    echo "$l"
}
# run_step NAME LIMIT CMD...: runs CMD with a timeout, its output in $L/NAME.log; records a row
run_step() {
    local name=$1 limit t0 rc
    limit=$(left "$2")
    shift 2
    log "$name (timeout ${limit}s)"
    t0=$(date +%s)
    timeout -k 5 "$limit" "$@" > "$L/$name.log" 2>&1
    rc=$?
    local dt=$(($(date +%s) - t0))
    if [ $rc -eq 0 ]; then
        row "$name" PASS "${dt}s"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        row "$name" TIMEOUT "after ${limit}s (see $name.log)"
        FAILED=1
    elif [ $rc -eq 77 ]; then
        row "$name" SKIP "no device"
    else
        row "$name" FAIL "exit $rc (see $name.log)"
        FAILED=1
    fi
    if [ $rc -ne 0 ] && [ $rc -ne 77 ]; then
        echo "---- last lines of $name.log ----"
        tail -n 25 "$L/$name.log"
        echo "----"
    fi
    return $rc
}

# ---- dependencies from .gpu-debs ----
CMAKE_EXTRA=()
if ls .gpu-debs/*.deb > /dev/null 2>&1; then
    D=/tmp/cinder-gpu-debs
    mkdir -p "$D"
    for f in .gpu-debs/*.deb; do
        if command -v dpkg > /dev/null; then
            dpkg -x "$f" "$D"
        else # ar archive with a data.tar.* member
            python3 - "$f" "$D" << 'PY'
import io, sys, tarfile
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"!<arch>\n", sys.argv[1]
pos = 8
while pos + 60 <= len(data):
    name = data[pos:pos + 16].decode().strip().rstrip("/")
    size = int(data[pos + 48:pos + 58])
    if name.startswith("data.tar"):
        tarfile.open(fileobj=io.BytesIO(data[pos + 60:pos + 60 + size])).extractall(sys.argv[2])
    pos += 60 + size + (size & 1)
PY
        fi
    done
    ARCH_LIB=$D/usr/lib/x86_64-linux-gnu
    # libzmq.pc names its static-link dependencies (Requires.private: krb5-gssapi, libsodium,
    # openpgm, norm, libbsd), whose -dev packages are not carried: the build links the shared
    # library, which finds them at run time.
    [ -f "$ARCH_LIB/pkgconfig/libzmq.pc" ] && sed -i '/^Requires.private:/d' "$ARCH_LIB/pkgconfig/libzmq.pc"
    export PKG_CONFIG_PATH=$ARCH_LIB/pkgconfig:$D/usr/share/pkgconfig
    export PKG_CONFIG_SYSROOT_DIR=$D
    export LD_LIBRARY_PATH=$ARCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    # pkg-config: the carried pkgconf (needs glibc 2.34), else the machine's, else a Python
    # stand-in that reads the carried .pc files (CINDER_GPU_PKGCONFIG=shim forces it)
    if [ "${CINDER_GPU_PKGCONFIG:-}" != shim ] && "$D/usr/bin/pkgconf" --version > /dev/null 2>&1; then
        CMAKE_EXTRA+=("-DPKG_CONFIG_EXECUTABLE=$D/usr/bin/pkgconf")
    elif [ "${CINDER_GPU_PKGCONFIG:-}" != shim ] && pkg-config --version > /dev/null 2>&1; then
        log "the carried pkgconf does not run here: using the machine's pkg-config"
    else
        log "using tests/gpu/pkg-config.py as pkg-config"
        CMAKE_EXTRA+=("-DPKG_CONFIG_EXECUTABLE=$ROOT/tests/gpu/pkg-config.py")
    fi
    log "unpacked $(ls .gpu-debs/*.deb | wc -l) .deb files into $D"
else
    log "no .gpu-debs/ (tests/gpu/fetch-debs.sh): using the system's cJSON, PCRE2, pkg-config"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2> /dev/null
DEVICE=$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -1)

# ---- the serving parts: are ZeroMQ, protobuf-c, protoc-c, protoc and the Python modules usable? ----
SERVE_WHY="" # empty: build and run the serving step
SERVE_PY=${CINDER_GPU_PYTHON:-$(command -v python3)} # the dry run may name a 3.12 here
SERVE_PYPATH=/tmp/cinder-gpu-py # the wheels, installed here (only for the serving step)
serve_tool() { # the carried program, else the machine's
    if [ -n "${D:-}" ] && [ -x "$D/usr/bin/$1" ]; then echo "$D/usr/bin/$1"; else command -v "$1"; fi
}
serve_check() {
    [ "${CINDER_GPU_SERVE:-1}" = 0 ] && { SERVE_WHY="CINDER_GPU_SERVE=0"; return; }
    PROTOC_C=$(serve_tool protoc-c)
    PROTOC=$(serve_tool protoc)
    local t
    for t in "$PROTOC_C" "$PROTOC"; do
        [ -n "$t" ] || { SERVE_WHY="no protoc-c or protoc (tests/gpu/fetch-debs.sh)"; return; }
        "$t" --version > "$L/serve-check.log" 2>&1 || {
            SERVE_WHY="$t does not run here: $(head -c 200 "$L/serve-check.log")"
            return
        }
    done
    local inc=() lib=()
    [ -n "${D:-}" ] && inc=("-I$D/usr/include") && lib=("-L$ARCH_LIB")
    printf '%s\n' '#include <stdio.h>' '#include <zmq.h>' '#include <protobuf-c/protobuf-c.h>' \
        'int main(void) { int a, b, c; zmq_version(&a, &b, &c);' \
        '  printf("libzmq %d.%d.%d, protobuf-c %s\n", a, b, c, protobuf_c_version()); return 0; }' \
        > /tmp/cinder-serve-check.c
    if ! cc "${inc[@]}" /tmp/cinder-serve-check.c -o /tmp/cinder-serve-check "${lib[@]}" -lzmq \
        -lprotobuf-c > "$L/serve-check.log" 2>&1 || ! /tmp/cinder-serve-check >> "$L/serve-check.log" 2>&1; then
        SERVE_WHY="libzmq/libprotobuf-c do not build or run here: $(tail -n 2 "$L/serve-check.log" | head -c 300)"
        return
    fi
    log "$(tail -n 1 "$L/serve-check.log")"
    [ -n "$SERVE_PY" ] || { SERVE_WHY="no python3"; return; }
    if ! "$SERVE_PY" -c 'import zmq, google.protobuf' > /dev/null 2>&1; then
        if ls .gpu-debs/wheels/*.whl > /dev/null 2>&1; then
            rm -rf "$SERVE_PYPATH"
            # pip --no-index from the files; where pip is missing, a wheel is a zip to unpack
            "$SERVE_PY" -m pip install --quiet --no-index --no-deps --target "$SERVE_PYPATH" \
                .gpu-debs/wheels/*.whl > "$L/serve-check.log" 2>&1 ||
                "$SERVE_PY" -c 'import sys, zipfile
for w in sys.argv[2:]: zipfile.ZipFile(w).extractall(sys.argv[1])' "$SERVE_PYPATH" .gpu-debs/wheels/*.whl \
                    >> "$L/serve-check.log" 2>&1
        fi
        PYTHONPATH=$SERVE_PYPATH "$SERVE_PY" -c 'import zmq, google.protobuf' >> "$L/serve-check.log" 2>&1 || {
            SERVE_WHY="$SERVE_PY cannot import zmq and google.protobuf (.gpu-debs/wheels): $(tail -n 1 "$L/serve-check.log")"
            return
        }
    fi
    CMAKE_EXTRA+=("-DPROTOC_C=$PROTOC_C" "-DPROTOC=$PROTOC" "-DCINDER_PYTHON=$SERVE_PY")
}
serve_check
if [ -z "$SERVE_WHY" ]; then ZMQ=ON; else ZMQ=OFF; log "serving parts left out: $SERVE_WHY"; fi

# ---- build: cinder first (the models need it), the rest while the models are written ----
run_step configure 60 cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCINDER_ZMQ=$ZMQ -DCINDER_MPI=OFF -DCINDER_GPU_TESTS=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DCINDER_GPU_MODELS="$M" "${CMAKE_EXTRA[@]}" || { FAILED=1; }
J=${CINDER_GPU_JOBS:+-j$CINDER_GPU_JOBS}
run_step build-cinder 300 ninja -C "$B" $J cinder || FAILED=1
MODEL_PIDS=()
# The serving model: Llama 3.2 1B's shape with SmolLM2's tokenizer (in the repository) and its
# 49152-token vocabulary, as an HF folder (a GGUF copies only a GGUF's tokenizer), so that the
# random prompt ids (< 40000) and every id the model samples detokenize.
SERVE_MODEL=$M/serve-llama-1b-bf16
serve_shape=(--preset llama-1b --type bf16)
[ -n "${CINDER_GPU_SMALL:-}" ] && SERVE_MODEL=$M/serve-tiny-f32 && serve_shape=(--preset tiny --context 2048)
if [ -x "$B/cinder" ]; then
    log "writing models in $M"
    SPECS="tiny:f32 llama-1b:bf16 llama-1b:q4_1 llama-1b:q8_0"
    [ -n "${CINDER_GPU_SMALL:-}" ] && SPECS="tiny:f32" # a dry run of the script elsewhere
    for spec in $SPECS; do
        preset=${spec%%:*} type=${spec##*:}
        out=$M/$preset-$type.gguf
        [ -s "$out" ] && continue
        "$B/cinder" write-model --out "$out.tmp" --preset "$preset" --type "$type" \
            > "$L/model-$preset-$type.log" 2>&1 && mv "$out.tmp" "$out" &
        MODEL_PIDS+=($!)
    done
    if [ -z "$SERVE_WHY" ] && [ ! -s "$SERVE_MODEL/model.safetensors" ]; then
        rm -rf "$SERVE_MODEL.tmp" "$SERVE_MODEL"
        "$B/cinder" write-model --out "$SERVE_MODEL.tmp" --format hf "${serve_shape[@]}" --vocab 49152 \
            --tokenizer-from tests/data/tokenizer/smollm2 > "$L/model-serve.log" 2>&1 &&
            mv "$SERVE_MODEL.tmp" "$SERVE_MODEL" &
        MODEL_PIDS+=($!)
    fi
fi
run_step build-gpu 120 ninja -C "$B" $J test_cuda_ops test_cuda_engine bench_cuda || FAILED=1
if [ -z "$SERVE_WHY" ]; then
    run_step build-serve 90 ninja -C "$B" $J cinder-coordinator cinder-worker cinder_python_proto ||
        { FAILED=1; SERVE_WHY="the serving parts did not build (build-serve.log)"; }
fi
for p in "${MODEL_PIDS[@]}"; do wait "$p"; done
for spec in tiny-f32 llama-1b-bf16 llama-1b-q4_1 llama-1b-q8_0; do
    [ -n "${CINDER_GPU_SMALL:-}" ] && [ "$spec" != tiny-f32 ] && continue
    [ -s "$M/$spec.gguf" ] || { row "model $spec" FAIL "not written (see model-$spec.log)"; FAILED=1; }
done

# ---- tests ----
if [ -x "$B/tests/test_cuda_ops" ]; then
    run_step ctest-gpu 200 ctest --test-dir "$B" -L gpu --output-on-failure --timeout 150
    # one row per test from ctest's summary lines
    while read -r line; do
        t=$(echo "$line" | sed -E 's/.*Test +#[0-9]+: ([^ ]+) .*/\1/')
        r=$(echo "$line" | grep -oE 'Passed|\*\*\*Failed|Failed|Not Run|Timeout|\*\*\*Skipped|Exception' | head -1)
        s=$(echo "$line" | grep -oE '[0-9.]+ sec' | head -1)
        row "  $t" "${r//\*/}" "$s"
    done < <(grep -E 'Test +#[0-9]+:' "$L/ctest-gpu.log")
    grep -hE '^/.*(agreement|error)|prefill [0-9]+ positions|decode [0-9]+ steps' "$L/ctest-gpu.log" | head -20
fi

# ---- benchmarks ----
if [ -x "$B/bench/bench_cuda" ]; then
    run_step bench-cuda 150 "$B/bench/bench_cuda" --tsv "$RES" \
        --model "1B-bf16=$M/llama-1b-bf16.gguf" --model "1B-q4_1=$M/llama-1b-q4_1.gguf" \
        --model "1B-q8_0=$M/llama-1b-q8_0.gguf"
    cat "$L/bench-cuda.log"
    OURS=$(awk -F'\t' '$1 ~ /^flash prefill/ {print $2}' "$RES")
    run_step bench-sdpa 60 python3 tests/gpu/bench_sdpa.py --tsv "$RES" --ours "${OURS:-0}"
    cat "$L/bench-sdpa.log"
fi

# ---- serving: continuous against static batching, a coordinator and one worker on the GPU ----
# 96 requests, 32 in flight (the issue's "32 concurrent requests of mixed lengths"), all arriving
# within half a second so that both modes run at capacity; prompts 16-256 and outputs 16-256
# tokens (log-uniform). The worker starts without mpirun (there is none here) and takes 0.9 of
# the GPU memory the model leaves for its KV pool (cinder-worker --kv-fraction).
SERVE_DEV=cuda SERVE_LOAD=(--requests 96 --rate 200 --concurrency 32 --prompt-max 256 --output-max 256)
if [ -n "${CINDER_GPU_SMALL:-}" ]; then # the dry run: a CPU worker, a small load
    SERVE_DEV=cpu SERVE_LOAD=(--requests 12 --rate 100 --concurrency 6 --prompt-max 64 --output-max 32)
fi
if [ -z "$SERVE_WHY" ] && [ "$SERVE_DEV" = cuda ] && [ -z "${DEVICE:-}" ]; then SERVE_WHY="no GPU"; fi
if [ -z "$SERVE_WHY" ] && [ ! -x "$B/cinder-worker" ]; then SERVE_WHY="cinder-worker not built"; fi
if [ -z "$SERVE_WHY" ] && [ ! -s "$SERVE_MODEL/model.safetensors" ]; then
    SERVE_WHY="$SERVE_MODEL not written (model-serve.log)"
fi
if [ -z "$SERVE_WHY" ] && [ "$(left 90)" -lt 60 ]; then SERVE_WHY="$(left 90) s of the budget left"; fi
if [ -n "$SERVE_WHY" ]; then
    row serving SKIP "$SERVE_WHY"
else
    run_step serving 90 env PYTHONPATH="$SERVE_PYPATH${PYTHONPATH:+:$PYTHONPATH}" \
        CINDER_BUILD="$ROOT/$B" CINDER_PB2_DIR="$ROOT/$B/python" "$SERVE_PY" bench/bench_serving.py \
        --model "$SERVE_MODEL" --device "$SERVE_DEV" --no-mpirun "${SERVE_LOAD[@]}" --tsv "$RES"
    cat "$L/serving.log"
fi

# ---- compute-sanitizer on the op tests (small shapes) ----
if [ -x "$B/tests/test_cuda_ops" ] && command -v compute-sanitizer > /dev/null; then
    run_step memcheck 150 compute-sanitizer --tool memcheck --error-exitcode 9 \
        "$B/tests/test_cuda_ops" --quick
    run_step racecheck 100 compute-sanitizer --tool racecheck --error-exitcode 9 \
        "$B/tests/test_cuda_ops" --quick
else
    row sanitizer SKIP "no compute-sanitizer or no test binary"
fi

# ---- the host CPU's AVX-512 kernels, with what time is left (no build machine has AVX-512):
# the real (not emulated) kernels checked against scalar and AVX2 bit for bit, then timed ----
if [ $((BUDGET - $(elapsed))) -gt 75 ] && grep -q avx512_vnni /proc/cpuinfo 2> /dev/null; then
    run_step build-cpu-kernels 40 ninja -C "$B" $J test_kernels_cpu bench_kernels &&
        run_step test-kernels-avx512 30 "$B/tests/test_kernels_cpu" &&
        run_step bench-kernels-avx512 35 "$B/bench/bench_kernels" 2 Q4_1 avx512 &&
        run_step bench-kernels-avx2 35 "$B/bench/bench_kernels" 2 Q4_1 avx2
    cat "$L/bench-kernels-avx512.log" "$L/bench-kernels-avx2.log" 2> /dev/null
else
    row cpu-avx512 SKIP "no AVX-512 VNNI on the host, or no time left"
fi

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    cp "$RES" "$OUT/" 2> /dev/null
    tar -czf "$OUT/gpu-logs.tar.gz" -C "$L" . 2> /dev/null
fi

# ---- the table ----
echo
echo "== cinder GPU run: ${DEVICE:-unknown device}, $(date -u +%Y-%m-%d), $(elapsed)s =="
printf '%-34s %-8s %s\n' "step / test" result detail
for r in "${ROWS[@]}"; do
    IFS='|' read -r a b c <<< "$r"
    printf '%-34s %-8s %s\n' "$a" "$b" "$c"
done
if [ -s "$RES" ]; then
    echo
    printf '%-30s %10s %-8s %6s %s\n' benchmark value unit ratio note
    while IFS=$'\t' read -r n v u r note; do
        [ "$r" = "-1.000" ] && r=""
        printf '%-30s %10s %-8s %6s %s\n' "$n" "$v" "$u" "$r" "$note"
    done < "$RES"
fi
if [ $FAILED -ne 0 ]; then
    echo "RESULT: FAILED (see the rows above and $L)"
    exit 1
fi
if [ -z "${DEVICE:-}" ]; then
    echo "RESULT: built and set up, but there is no GPU here: the GPU tests were skipped"
    exit 2
fi
echo "RESULT: all GPU steps passed"

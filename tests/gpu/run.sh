#!/usr/bin/env bash
# tests/gpu/run.sh - the one script for the GPU test machine (docs/testing.md, "GPU"):
# builds with CUDA (no MPI, no ZeroMQ), writes the test models, runs the GPU tests (ctest
# label "gpu"), the GPU benchmarks and PyTorch's SDPA beside them, then compute-sanitizer
# (memcheck, racecheck) on the op tests; prints a short table last. Within 8 minutes: every
# step has a timeout cut to what is left of the budget. Exit status 1 when anything failed.
#
#   tests/gpu/run.sh            (repository root or anywhere; $OUT, if set, gets the logs)
#   CINDER_GPU_JOBS=2 CINDER_GPU_SMALL=1 CINDER_GPU_BUDGET=3000 tests/gpu/run.sh
#                               a dry run on a build machine without a GPU (tiny model only;
#                               the GPU tests skip)
#
# Debian packages the machine lacks (cJSON, PCRE2, pkgconf) come from .gpu-debs/, filled by
# tests/gpu/fetch-debs.sh on a build machine and carried along; they are unpacked under /tmp.
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

# ---- build: cinder first (the models need it), the rest while the models are written ----
run_step configure 60 cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCINDER_ZMQ=OFF -DCINDER_MPI=OFF -DCINDER_GPU_TESTS=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DCINDER_GPU_MODELS="$M" "${CMAKE_EXTRA[@]}" || { FAILED=1; }
J=${CINDER_GPU_JOBS:+-j$CINDER_GPU_JOBS}
run_step build-cinder 300 ninja -C "$B" $J cinder || FAILED=1
MODEL_PIDS=()
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
fi
run_step build-gpu 120 ninja -C "$B" $J test_cuda_ops test_cuda_engine bench_cuda || FAILED=1
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

# ---- compute-sanitizer on the op tests (small shapes) ----
if [ -x "$B/tests/test_cuda_ops" ] && command -v compute-sanitizer > /dev/null; then
    run_step memcheck 150 compute-sanitizer --tool memcheck --error-exitcode 9 \
        "$B/tests/test_cuda_ops" --quick
    run_step racecheck 100 compute-sanitizer --tool racecheck --error-exitcode 9 \
        "$B/tests/test_cuda_ops" --quick
else
    row sanitizer SKIP "no compute-sanitizer or no test binary"
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

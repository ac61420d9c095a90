#!/usr/bin/env bash
# A cinder cluster on this machine: one cinder-coordinator and worker groups started with
# mpirun. Prints the client endpoint when every group is ready, then waits; Ctrl-C or SIGTERM
# stops everything (the coordinator ends its requests and tells the workers to leave).
#
#   deploy/local-cluster.sh --model PATH [--ranks N] [--groups G] [--threads T]
#                           [--device cpu|cuda] [--no-mpirun] [--worker-arg ARG]...
#                           [--listen ENDPOINT] [--control ENDPOINT] [--build DIR]
#                           [-- COORDINATOR OPTIONS...]
#
#   --ranks N       ranks per worker group (mpirun -np N; default 1)
#   --groups G      worker groups (data parallelism; default 1), each its own mpirun job
#   --threads T     CPU threads per rank (default: the cores divided among the ranks)
#   --device D      the workers' --device: cpu (default) or cuda
#   --no-mpirun     start each one-rank group as a plain process (automatic without mpirun)
#   --worker-arg A  one more cinder-worker argument (repeat it for several)
#   --detach        start, print the endpoint, and return (stop later with: kill PID, as printed)
# Anything after -- goes to cinder-coordinator (e.g. --kv-blocks 256 --max-batch-tokens 1024, or
# --kv-type f16 --kv-mib 512 for 16-bit KV caches on the workers).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

model="" ranks=1 groups=1 threads="" build="${BUILD_DIR:-$here/build}" detach=0 device=cpu no_mpirun=0
worker_extra=()
listen="tcp://127.0.0.1:5555" control="tcp://127.0.0.1:5556"
coord_args=()
usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --model) model=$2; shift 2 ;;
        --ranks) ranks=$2; shift 2 ;;
        --groups) groups=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --device) device=$2; shift 2 ;;
        --no-mpirun) no_mpirun=1; shift ;;
        --worker-arg) worker_extra+=("$2"); shift 2 ;;
        --listen) listen=$2; shift 2 ;;
        --control) control=$2; shift 2 ;;
        --build) build=$2; shift 2 ;;
        --detach) detach=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; coord_args=("$@"); break ;;
        *) echo "local-cluster: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
[ -n "$model" ] || { echo "local-cluster: --model PATH is required" >&2; exit 2; }
[ -e "$model" ] || { echo "local-cluster: no model at $model" >&2; exit 2; }
for p in cinder cinder-coordinator cinder-worker; do
    [ -x "$build/$p" ] || { echo "local-cluster: $build/$p is not built (scripts/setup.sh builds it)" >&2; exit 2; }
done
case "$ranks$groups" in *[!0-9]*) echo "local-cluster: --ranks and --groups take numbers" >&2; exit 2 ;; esac
# A one-rank group needs no mpirun (a build without MPI runs one rank; an MPI build alone is a
# one-rank MPI job).
if ! command -v mpirun >/dev/null; then
    [ "$ranks" = 1 ] || { echo "local-cluster: --ranks $ranks needs mpirun (apt-get install openmpi-bin)" >&2; exit 2; }
    no_mpirun=1
fi
[ "$ranks" = 1 ] || [ $no_mpirun = 0 ] || { echo "local-cluster: --no-mpirun runs one rank per group, not $ranks" >&2; exit 2; }
if [ -z "$threads" ]; then
    threads=$(( $(nproc) / (ranks * groups) ))
    [ "$threads" -ge 1 ] || threads=1
fi

if [ $no_mpirun = 1 ]; then
    mpi=()
else
    mpi=(mpirun --oversubscribe -np "$ranks")
    [ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
fi
logs=$(mktemp -d "${TMPDIR:-/tmp}/cinder-cluster.XXXXXX")
pids=()

stop() {
    trap - INT TERM EXIT
    # The coordinator first: it ends every request and sends the workers Shutdown.
    [ -n "${coord_pid:-}" ] && kill -TERM "$coord_pid" 2>/dev/null || true
    for _ in $(seq 50); do
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "local-cluster: stopped (logs in $logs)" >&2
}

"$build/cinder-coordinator" --model "$model" --listen "$listen" --control "$control" \
    "${coord_args[@]}" >"$logs/coordinator.log" 2>&1 &
coord_pid=$!
pids+=("$coord_pid")
[ $detach = 1 ] || trap 'stop; exit 130' INT TERM
[ $detach = 1 ] || trap stop EXIT

for g in $(seq 0 $((groups - 1))); do
    "${mpi[@]}" "$build/cinder-worker" --coordinator "$control" --group "$g" --threads "$threads" \
        --device "$device" "${worker_extra[@]}" >"$logs/group$g.log" 2>&1 &
    pids+=($!)
done

# Ready when Status shows every group READY.
for _ in $(seq 600); do
    for p in "${pids[@]}"; do
        if ! kill -0 "$p" 2>/dev/null; then
            echo "local-cluster: a process exited while starting; its log:" >&2
            tail -n 20 "$logs"/*.log >&2
            exit 1
        fi
    done
    ready=$("$build/cinder" status --server "$listen" --json --timeout-ms 1000 2>/dev/null |
        python3 -c 'import json,sys; s=json.load(sys.stdin); print(sum(g.get("state")=="GROUP_STATE_READY" for g in s.get("groups",[])))' 2>/dev/null || echo 0)
    [ "$ready" -ge "$groups" ] && break
    sleep 0.5
done
if [ "${ready:-0}" -lt "$groups" ]; then
    echo "local-cluster: the groups did not become ready in 5 minutes; logs:" >&2
    tail -n 20 "$logs"/*.log >&2
    exit 1
fi
echo "local-cluster: ready: $groups group(s) of $ranks rank(s) ($device, $([ $no_mpirun = 1 ] && echo "no mpirun" || echo mpirun)), $threads thread(s) each; clients connect to $listen" >&2
echo "$listen"
if [ $detach = 1 ]; then
    echo "local-cluster: detached; stop with: kill ${pids[*]}" >&2
    exit 0
fi
echo "local-cluster: Ctrl-C stops it (logs in $logs)" >&2
wait "$coord_pid" || true

#!/bin/sh
# comm_mpirun.sh MPIRUN NP PROGRAM [ARGS...] - runs PROGRAM as NP ranks on this machine.
# Exits 77 (ctest: skipped) when there is no mpirun. Open MPI wants --allow-run-as-root to run
# as root (containers, CI) and --oversubscribe to start more ranks than there are cores.
mpirun=$1
np=$2
shift 2
if [ -z "$mpirun" ] || ! command -v "$mpirun" >/dev/null 2>&1; then
    echo "comm_mpirun.sh: no mpirun ('$mpirun') - skipped"
    exit 77
fi
flags=
if "$mpirun" --version 2>/dev/null | grep -Eq "Open MPI|OpenRTE"; then
    flags="--allow-run-as-root --oversubscribe"
fi
exec "$mpirun" $flags -np "$np" "$@"

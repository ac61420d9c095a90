#!/usr/bin/env python3
"""cinder-worker's refusals, run as a user would, without a coordinator:
  - an unknown --device: exit 2 naming the choices;
  - --device cuda where the build has no CUDA backend, or the machine no GPU: exit 1 at once with
    a message that says which (on a machine with a GPU the device is found, and the worker then
    gives up joining a coordinator that is not there: exit 1 naming the coordinator);
  - a build without MPI started as one of several mpirun ranks: exit 2 (only for such a build).

usage: test_worker_cli.py CINDER_WORKER mpi|nompi
"""
import os
import socket
import subprocess
import sys
import time

worker, mpi = sys.argv[1], sys.argv[2]
failures = 0


def check(cond, what):
    global failures
    print(f"  {'ok  ' if cond else 'FAIL'} {what}")
    failures += not cond


def run(*args, env=None):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    t0 = time.monotonic()
    p = subprocess.run([worker, "--coordinator", endpoint, "--timeout-ms", "1500", *args],
                       capture_output=True, text=True, timeout=30, env=dict(os.environ, **(env or {})))
    return p.returncode, p.stderr, time.monotonic() - t0


rc, err, _ = run("--device", "tpu")
check(rc == 2 and "--device is cpu or cuda, not 'tpu'" in err, f"--device tpu: exit {rc}, {err.strip()!r}")

rc, err, dt = run("--device", "cuda")
no_cuda = "built without the CUDA backend" in err
no_gpu = "no CUDA device found" in err
if no_cuda or no_gpu:
    check(rc == 1 and dt < 10, f"--device cuda refused at once ({dt:.1f} s, exit {rc}): {err.strip()!r}")
else:  # a GPU is here: the probe passed, joining failed
    check(rc == 1 and "could not join" in err,
          f"--device cuda with a GPU, no coordinator: exit {rc}, {err.strip()[-200:]!r}")

if mpi == "nompi":
    rc, err, _ = run(env={"OMPI_COMM_WORLD_SIZE": "2"})
    check(rc == 2 and "this build has no MPI" in err, f"one of 2 mpirun ranks: exit {rc}, {err.strip()!r}")

if failures:
    print(f"test_worker_cli: {failures} check(s) failed")
    sys.exit(1)
print("test_worker_cli: all checks passed")

#!/usr/bin/env python3
"""A real cinder cluster for tests: `cinder-coordinator` plus worker groups (`mpirun -np N
cinder-worker`) on free loopback ports, ready when Status shows the groups READY, stopped
(SIGTERM, then SIGKILL after a grace period) on exit, with every process's stderr shown when
something failed.

A group of one rank starts `cinder-worker` directly, without mpirun, when mpirun is not
installed or CINDER_NO_MPIRUN=1 (or Cluster(mpirun=False)): a build without MPI runs one rank,
an MPI build alone is a one-rank MPI job. Groups of several ranks need mpirun.

    from cluster import Cluster, skip_unless_runnable
    skip_unless_runnable(model)            # exit 77 (ctest SKIP) without model/programs
    with Cluster(model, ranks=1, worker_args=["--threads", "1"]) as cl:
        cl.endpoint                        # clients: tcp://127.0.0.1:PORT
        cl.control                         # workers: tcp://127.0.0.1:PORT
        with cl.client() as c: ...         # a cinder_client.Client
        cl.add_group(ranks=2)              # another worker group (data parallelism)
        cl.kill_group(0)                   # SIGKILL a group (failure tests)
        cl.restart_coordinator()           # a new coordinator on the same ports (groups too)

From a shell, for trying things by hand:
    tests/cluster/cluster.py --model M [--ranks N] [--groups G] [--no-mpirun] [--device cuda]
                                                                  (Ctrl-C stops it)

The programs come from $CINDER_BUILD (default: build/ next to tests/). Environment needs
client/python on PYTHONPATH (for cinder_client) and cinder_pb2 (see cinder_client/_proto.py).
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.abspath(os.path.join(_HERE, "..", ".."))
sys.path.insert(0, os.path.join(_ROOT, "client", "python"))

SKIP = 77


def build_dir():
    return os.environ.get("CINDER_BUILD") or os.path.join(_ROOT, "build")


def programs(build=None):
    """The coordinator and worker programs. $CINDER_WORKER_BIN picks another worker: the
    sanitizer run tests its ASan coordinator with the optimized build's worker, whose forward
    pass is fast enough to serve (the engine is checked under ASan by its own tests)."""
    b = build or build_dir()
    worker = os.environ.get("CINDER_WORKER_BIN") or os.path.join(b, "cinder-worker")
    return os.path.join(b, "cinder-coordinator"), worker


def use_mpirun(ranks=1, mpirun=None):
    """Whether a group of this many ranks starts under mpirun: always for several ranks; for
    one, unless mpirun is False, CINDER_NO_MPIRUN=1 or mpirun is not installed."""
    if ranks > 1:
        return True
    if mpirun is not None:
        return bool(mpirun)
    if os.environ.get("CINDER_NO_MPIRUN", "") not in ("", "0"):
        return False
    return shutil.which("mpirun") is not None


def skip_reason(model, build=None, ranks=1):
    """Why a cluster cannot run here (None: it can)."""
    if not model or not os.path.exists(model):
        return f"model {model} not found"
    if use_mpirun(ranks) and not shutil.which("mpirun"):
        return f"mpirun not found (groups of {ranks} ranks need it)"
    for p in programs(build):
        if not os.access(p, os.X_OK):
            return f"{p} not built"
    return None


def skip_unless_runnable(model, build=None, name="test", ranks=1):
    why = skip_reason(model, build, ranks)
    if why:
        print(f"{name}: {why}, skipping")
        sys.exit(SKIP)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ClusterError(RuntimeError):
    pass


class _Proc:
    def __init__(self, name, argv, log_dir, env):
        self.name = name
        self.argv = argv
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.log = open(self.log_path, "wb")
        # A session of its own: mpirun's children go down with it.
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                  start_new_session=True, env=env)

    def alive(self):
        return self.p.poll() is None

    def signal(self, sig):
        try:
            os.killpg(self.p.pid, sig)
        except ProcessLookupError:
            pass

    def tail(self, n=60):
        self.log.flush()
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


class Cluster:
    def __init__(self, model, ranks=1, groups=1, coordinator_args=(), worker_args=("--threads", "1"),
                 build=None, ready_timeout_s=300, grace_s=10, env=None, wait_ready=True, mpirun=None):
        self.model = model
        self.build = build or build_dir()
        self.coordinator_bin, self.worker_bin = programs(self.build)
        self.ranks = ranks
        self.n_groups = groups
        self.coordinator_args = list(coordinator_args)
        self.worker_args = list(worker_args)
        self.ready_timeout_s = ready_timeout_s
        self.grace_s = grace_s
        self.env = dict(os.environ, **(env or {}))
        self.wait_for_ready = wait_ready
        self.mpirun = mpirun  # None: use_mpirun decides
        self.procs = []
        self.failed = False  # report() was called: the logs are kept
        self.coordinator = None
        self.groups = []  # _Proc of each mpirun
        self.group_specs = []  # (ranks, worker_args) of each group, to start it again
        self.restarts = 0
        self.log_dir = None
        port, control = free_port(), free_port()
        while control == port:
            control = free_port()
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.control = f"tcp://127.0.0.1:{control}"

    # -- lifetime ---------------------------------------------------------------------------

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.report()
            self.stop()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        failed = exc_type is not None and not issubclass(exc_type, (SystemExit, KeyboardInterrupt))
        if failed or (exc_type is SystemExit and exc and exc.code not in (0, None, SKIP)):
            self.report()
        self.stop()

    def start(self):
        self.log_dir = tempfile.mkdtemp(prefix="cinder-cluster-")
        self.coordinator = self._spawn("coordinator", self._coordinator_argv())
        for _ in range(self.n_groups):
            self.add_group(self.ranks, wait=False)
        if self.wait_for_ready:
            self.wait_ready(self.n_groups)

    def _spawn(self, name, argv):
        p = _Proc(name, argv, self.log_dir, self.env)
        self.procs.append(p)
        return p

    def _coordinator_argv(self):
        return [self.coordinator_bin, "--model", self.model, "--listen", self.endpoint,
                "--control", self.control, *self.coordinator_args]

    def add_group(self, ranks=None, worker_args=None, wait=True):
        """Starts another worker group (one mpirun job, or one worker process for a group of one
        rank without mpirun); waits until it is READY when wait."""
        ranks = ranks or self.ranks
        worker_args = self.worker_args if worker_args is None else worker_args
        self.group_specs.append((ranks, worker_args))
        self.groups.append(self._start_group(len(self.groups), ranks, worker_args))
        if wait:
            self.wait_ready(sum(1 for x in self.groups if x.alive()))
        return len(self.groups) - 1

    def _start_group(self, index, ranks, worker_args):
        launcher = []
        if use_mpirun(ranks, self.mpirun):
            launcher = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(ranks)]
            if os.geteuid() == 0:
                launcher.insert(1, "--allow-run-as-root")
        argv = [*launcher, self.worker_bin, "--coordinator", self.control, "--group", str(index),
                *worker_args]
        suffix = f".{self.restarts}" if self.restarts else ""
        return self._spawn(f"group{index}{suffix}", argv)

    def restart_coordinator(self, wait=True):
        """SIGTERM the coordinator and start a new one on the same ports, as an operator's
        restart would; clients connected to the old one stay connected (ZeroMQ reconnects
        them). The old coordinator's Shutdown sends its worker groups away (cinder-worker leaves
        on Shutdown, or when the coordinator is silent; it does not rejoin), so the groups are
        started again too, with the same ranks and arguments. Waits until they are READY."""
        old = [self.coordinator, *self.groups]
        self.coordinator.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for p in old:
            try:
                p.p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"cluster: {p.name} still running {self.grace_s} s after the coordinator's "
                      "SIGTERM; SIGKILL", file=sys.stderr)
                p.signal(signal.SIGKILL)
                p.p.wait()
        self.restarts += 1
        self.coordinator = self._spawn(f"coordinator.{self.restarts}", self._coordinator_argv())
        self.groups = [self._start_group(i, ranks, args) for i, (ranks, args) in enumerate(self.group_specs)]
        if wait:
            return self.wait_ready(len(self.groups))

    def kill_group(self, index, sig=signal.SIGKILL):
        self.groups[index].signal(sig)

    def stop(self):
        """SIGTERM to everything (workers first), SIGKILL what is left after the grace period."""
        for p in reversed(self.procs):
            if p.alive():
                p.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for p in self.procs:
            try:
                p.p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"cluster: {p.name} ignored SIGTERM for {self.grace_s} s; SIGKILL", file=sys.stderr)
                p.signal(signal.SIGKILL)
                p.p.wait()
            p.log.close()
        if self.log_dir and not self.failed:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def report(self, file=sys.stderr):
        """Prints the end of every process's output (and keeps the logs)."""
        self.failed = True
        for p in self.procs:
            rc = p.p.poll()
            state = "running" if rc is None else f"exited {rc}"
            print(f"---- cluster {p.name} ({state}): {' '.join(p.argv)}", file=file)
            print(p.tail(), file=file)
        print(f"---- end of cluster output (logs kept in {self.log_dir})", file=file)

    # -- state ------------------------------------------------------------------------------

    def check_alive(self):
        for p in self.procs:
            if not p.alive() and (p is self.coordinator or p in self.groups):
                raise ClusterError(f"{p.name} exited with status {p.p.returncode}:\n{p.tail(30)}")

    def client(self, timeout_ms=120000, connect_timeout_ms=5000):
        from cinder_client import Client
        return Client(self.endpoint, timeout_ms=timeout_ms, connect_timeout_ms=connect_timeout_ms)

    def status(self, timeout_ms=5000):
        with self.client(timeout_ms=timeout_ms, connect_timeout_ms=timeout_ms) as c:
            return c.status()

    def wait_ready(self, n_groups=1, timeout_s=None):
        """Waits until Status shows n_groups READY groups; returns the StatusReply."""
        from cinder_client import CinderError, pb
        deadline = time.monotonic() + (timeout_s or self.ready_timeout_s)
        last = "no answer yet"
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                st = self.status(timeout_ms=2000)
                ready = sum(1 for g in st.groups if g.state == pb.GROUP_STATE_READY)
                if ready >= n_groups:
                    return st
                last = f"{ready} of {n_groups} groups ready"
            except CinderError as e:
                last = str(e)
            time.sleep(0.5)
        raise ClusterError(f"the cluster was not ready within {timeout_s or self.ready_timeout_s} s: {last}")


def main():
    import argparse
    ap = argparse.ArgumentParser(description="Starts a cinder cluster on free loopback ports until Ctrl-C.")
    ap.add_argument("--model", required=True)
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument("--groups", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--build", default=None)
    ap.add_argument("--device", default="cpu", help="the workers' --device (cpu or cuda)")
    ap.add_argument("--no-mpirun", action="store_true",
                    help="start one-rank groups without mpirun (automatic when it is not installed)")
    args = ap.parse_args()
    mpirun = False if args.no_mpirun else None
    skip_unless_runnable(args.model, args.build, "cluster", args.ranks)
    with Cluster(args.model, ranks=args.ranks, groups=args.groups, build=args.build, mpirun=mpirun,
                 worker_args=["--threads", str(args.threads), "--device", args.device]) as cl:
        print(f"cluster ready: clients {cl.endpoint}, workers {cl.control}; logs in {cl.log_dir}", flush=True)
        try:
            while True:
                cl.check_alive()
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()

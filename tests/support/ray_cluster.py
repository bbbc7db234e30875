"""A real two-node Ray cluster on 127.0.0.1 for tests and benchmarks, and its clean-up by pid.

    cluster = LocalRayCluster.start(head_cpus=2, worker_cpus=1)
    ... chared run NAME --ray cluster.address, with cluster.env() in its environment ...
    cluster.stop()

- The head is the real `ray start --head --node-ip-address 127.0.0.1 --port P
  --include-dashboard=false`, in a temp dir of its own (`--temp-dir`), usage stats off.
- Loopback only. Subtle: Ray rewrites 127.0.0.1 to the machine's routable IP (and then
  listens on every interface) unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is set; with it,
  every gRPC server of the cluster binds 127.0.0.1. Every process of the cluster and every
  driver gets the setting (`env()`).
- The second node: `ray start --address` refuses to add a node under that setting (it is
  meant for one-node clusters on laptops), so `python -m tests.support.ray_cluster node
  ADDRESS CPUS` starts it the way `ray start` does (`ray._private.node.Node`, head=False),
  at 127.0.0.1, and stays in the foreground until killed.
- Clean-up never uses `ray stop` (it kills every Ray cluster on the machine by name, other
  sessions' too): each `ray start` and node process runs in a process group of its own;
  `stop()` collects those groups' processes and all their descendants (Ray's workers put
  themselves in groups of their own) and SIGKILLs them by pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Records are small: a small object store per node (Ray's default takes 30% of the RAM in /dev/shm)
OBJECT_STORE_BYTES = 200 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the cluster's processes and of its drivers."""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return {**env, **(extra or {})}


@dataclass
class LocalRayCluster:
    address: str
    temp_dir: Path
    groups: list[int] = field(default_factory=list)  # process groups this cluster started

    @classmethod
    def start(cls, head_cpus: int = 2, worker_cpus: int = 1, timeout_s: float = 120.0) -> "LocalRayCluster":
        # short path: Ray's unix sockets live under it (at most 107 characters)
        temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        port = free_port()
        cluster = cls(f"127.0.0.1:{port}", temp_dir)
        try:
            head = subprocess.Popen(
                [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                 f"--num-cpus={head_cpus}", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
                 f"--object-store-memory={OBJECT_STORE_BYTES}",
                 "--temp-dir", str(temp_dir)],
                env=cluster_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                start_new_session=True,
            )
            cluster.groups.append(head.pid)
            out, _ = head.communicate(timeout=timeout_s)  # `ray start` returns once its daemons run
            if head.returncode != 0:
                raise RuntimeError(f"ray start --head failed ({head.returncode}):\n{out[-3000:]}")
            if worker_cpus:
                cluster._start_worker_node(worker_cpus, timeout_s)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start_worker_node(self, cpus: int, timeout_s: float) -> None:
        node = subprocess.Popen(
            [sys.executable, "-m", "tests.support.ray_cluster", "node", self.address, str(cpus)],
            env=cluster_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True, cwd=REPO,
        )
        self.groups.append(node.pid)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = node.stdout.readline()
            if line.startswith("ready"):
                return
            if not line and node.poll() is not None:
                break
        raise RuntimeError(f"the second Ray node did not start (exit {node.poll()})")

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return cluster_env(extra)

    def processes(self) -> list:
        """Every live process this cluster started: its groups' members and their descendants."""
        import psutil

        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(proc.pid) in self.groups:
                    found[proc.pid] = proc
                    for child in proc.children(recursive=True):
                        found[child.pid] = child
            except (ProcessLookupError, psutil.Error):
                continue
        return list(found.values())

    def stop(self) -> None:
        import psutil

        for _ in range(3):  # a dying raylet may still start a worker: look again
            procs = self.processes()
            if not procs:
                break
            for proc in procs:
                try:
                    proc.send_signal(signal.SIGKILL)
                except psutil.Error:
                    pass
            psutil.wait_procs(procs, timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _run_node(address: str, cpus: int) -> None:
    """A worker node at 127.0.0.1 joined to `address`, as `ray start --address` starts one; never returns."""
    import ray
    import ray._private.node
    import ray._private.parameter

    params = ray._private.parameter.RayParams(
        gcs_address=address, node_ip_address="127.0.0.1", num_cpus=cpus, num_gpus=0,
        object_store_memory=OBJECT_STORE_BYTES, include_log_monitor=False, dashboard_agent_listen_port=None,
    )
    ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    # ready once the cluster counts this node alive
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    while sum(1 for n in ray.nodes() if n["Alive"]) < 2:
        time.sleep(0.1)
    ray.shutdown()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    if sys.argv[1:2] == ["node"]:
        _run_node(sys.argv[2], int(sys.argv[3]))

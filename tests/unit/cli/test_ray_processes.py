"""`chared run --ray` on a real two-node Ray cluster at 127.0.0.1, with scripted members.

The cluster (tests/support/ray_cluster.py: `ray start --head` plus a second node) is
started once for the module and killed by pid at the end. Each `chared` process is the
real CLI (tests/support/scripted_cli.py); its Ray actors get the scripted members through
the run's `--ray-runtime-env` (Ray's worker_process_setup_hook runs `scripted_cli.install`
in each worker), so everything but the model weights is the real thing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import error_lines, make_project, record_lines, wait_for

pytest.importorskip("ray")

from tests.support.ray_cluster import LocalRayCluster  # noqa: E402

SAMPLES = ", ".join(f"{{id: s{i}, inputs: {{question: q{i}}}, reference: {5 if i % 2 else 2}}}" for i in range(8))
WIDE = (
    "name: wide\nversion: 1\ntemplate: math_answer@1\n"
    f"dataset: {{kind: inline, samples: [{SAMPLES}]}}\n"
    "parser: number\nscorers: [exact]\ndecoding: {max_new_chars: 40, stop: [\"\\n\"]}\n"
    "variants:\n  - {name: five, models: [five]}\n  - {name: mix, models: [five, two], weights_sweep: [0.5]}\n"
)
PAIRS = 16  # 8 samples x 2 variants
ACTOR_LINE = re.compile(r"^ray: actor (\d)/(\d) \(.*\) pid (\d+) on 127\.0\.0\.1, 1 torch threads")


@pytest.fixture(scope="module")
def cluster():
    started = LocalRayCluster.start(head_cpus=2, worker_cpus=1)
    yield started
    started.stop()
    assert started.processes() == []


@pytest.fixture
def project(tmp_path: Path) -> Path:
    make_project(tmp_path)
    (tmp_path / "workflows" / "wide.yaml").write_text(WIDE)
    return tmp_path


class Drivers:
    """`chared` driver processes (own process groups, stderr to a file read while they run)."""

    def __init__(self, project: Path, cluster: LocalRayCluster):
        self.project, self.cluster = project, cluster
        self.started: list[subprocess.Popen] = []

    def start(self, *args: str, ray: bool = True, actors: int = 2, **test_env: str) -> subprocess.Popen:
        argv = list(args)
        if ray:
            runtime_env = {"worker_process_setup_hook": "tests.support.scripted_cli.install", "env_vars": test_env}
            argv += ["--ray", self.cluster.address, "--ray-actors", str(actors), "--ray-runtime-env",
                     json.dumps(runtime_env)]
        n = len(self.started)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.scripted_cli", *argv], cwd=self.project,
            env=self.cluster.env(test_env), stdout=(self.project / f"out{n}").open("w"),
            stderr=(self.project / f"err{n}").open("w"), start_new_session=True,
        )
        proc.index = n
        self.started.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
        proc.wait(timeout)
        return proc.returncode, self.out(proc), self.err(proc)

    def run(self, *args: str, **kwargs) -> tuple[int, str, str]:
        return self.finish(self.start(*args, **kwargs))

    def out(self, proc) -> str:
        return (self.project / f"out{proc.index}").read_text()

    def err(self, proc) -> str:
        return (self.project / f"err{proc.index}").read_text()

    def actor_pids(self, proc, n: int = 2) -> list[int]:
        lines = lambda: [m for m in map(ACTOR_LINE.match, self.err(proc).splitlines()) if m]  # noqa: E731
        wait_for(lambda: len(lines()) >= n or proc.poll() is not None, "the actors' lines")
        return [int(m.group(3)) for m in lines()]

    def close(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def drivers(project, cluster):
    started = Drivers(project, cluster)
    yield started
    started.close()


def rows(project: Path, run_id: str) -> list[dict]:
    return [json.loads(line) for line in record_lines(project, run_id)]


def assert_complete(project: Path, run_id: str) -> list[dict]:
    got = rows(project, run_id)
    assert len(got) == PAIRS and len({(r["sample_id"], r["variant"]) for r in got}) == PAIRS
    assert [r for r in got if r["error"]] == []
    return got


def test_an_ab_run_on_the_cluster_writes_and_logs_what_a_local_run_does(project, drivers, cluster) -> None:
    uri = f"sqlite:///{project / 'mlflow.db'}"
    code, _, err = drivers.run("ab", "wide", "--run-id", "local", "--tracker", "mlflow",
                               ray=False, MLFLOW_TRACKING_URI=uri)
    assert code == 0, err
    code, _, err = drivers.run("ab", "wide", "--run-id", "onray", "--tracker", "mlflow",
                               MLFLOW_TRACKING_URI=uri)
    assert code == 0, err
    assert "on Ray at 127.0.0.1:" in err and "2 actor(s), 1 torch thread(s) each" in err
    assert len({int(m.group(3)) for m in map(ACTOR_LINE.match, err.splitlines()) if m}) == 2
    # the records: the same pairs with the same outputs and scores (written in another order)
    same = ("sample_id", "variant", "sample_index", "prompt", "output", "parsed", "scores", "error",
            "finish_reason", "forward_passes", "inputs", "reference", "domain", "workflow", "template_hash")
    key = lambda r: json.dumps({k: r[k] for k in same}, sort_keys=True)  # noqa: E731
    assert sorted(map(key, assert_complete(project, "onray"))) == sorted(map(key, assert_complete(project, "local")))
    run_of = lambda run_id: json.loads((project / "runs" / run_id / "run.json").read_text())["run"]  # noqa: E731
    assert run_of("onray")["variants"] == run_of("local")["variants"]  # tokenizer families, from the actors
    assert run_of("onray")["finished_at"] is not None
    # the report and MLflow: the same numbers, logged by the driver as for a local run
    def ab_of(run_id: str) -> list:
        rows = json.loads((project / "runs" / run_id / "report" / "ab.json").read_text())["variants"]
        return [r for r in rows if r["metric"] not in ("latency_s", "chars_per_s")]

    assert ab_of("onray") == ab_of("local") != []
    assert logged(uri, "onray") == logged(uri, "local")
    assert logged(uri, "local")["five"][1]["exact"] == 0.5  # s1, s3, s5, s7 want a 5


def logged(uri: str, run_id: str) -> dict:
    """What MLflow holds for one chared run: per variant, its params and its non-timing metrics."""
    from chared_flows.tracking.mlflow import make_client

    client, _ = make_client(uri)
    experiment = client.get_experiment_by_name("chared/wide")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`chared.run_id` = '{run_id}'")
    # batch_size: a local A/B times its first samples alone, Ray actors decode theirs in batches
    timing = ("latency", "chars_per_s", "wall", "duration", "batch_size")
    children = {r.data.tags["chared.variant"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert set(children) == {"five", "mix-w0.5"}
    return {name: ({k: v for k, v in r.data.params.items() if "run_id" not in k},
                   {k: v for k, v in r.data.metrics.items() if not any(t in k for t in timing)})
            for name, r in children.items()}


@pytest.mark.parametrize("restarts, news", [
    (None, "Ray restarted it and retried its pairs in flight"),  # Ray restarts the actor
    ("0", "is gone for good"),  # Ray may not: the driver starts a new actor and resubmits
])
def test_an_actor_killed_mid_run_loses_nothing(project, drivers, cluster, restarts, news) -> None:
    gate = project / "gate"
    extra = ["--ray-max-restarts", restarts] if restarts else []
    # one pair per actor at a time, so a record is written while the other actor still decodes
    proc = drivers.start("run", "wide", "--run-id", "r1", "--no-track", "--batch-size", "1", *extra,
                         CHARED_TEST_DELAY_S="0.02", CHARED_TEST_GATE=str(gate))
    victim = drivers.actor_pids(proc)[0]
    assert victim in {p.pid for p in cluster.processes()}  # an actor process of this test's cluster
    wait_for(lambda: len(record_lines(project)) >= 2 or proc.poll() is not None, "two records")
    gate.touch()  # every actor now waits in its pair's next forward pass
    before = record_lines(project)
    assert len(before) < PAIRS
    os.kill(victim, signal.SIGKILL)
    gate.unlink()
    code, out, err = drivers.finish(proc)
    assert code == 0, err
    assert news in err, err
    got = assert_complete(project, "r1")
    assert record_lines(project)[: len(before)] == before  # what was written stays as it was
    assert {v["n_samples"] for v in json.loads(out).values()} == {8.0}
    assert len(got) == PAIRS


def alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_lock_refuses_a_second_driver_and_an_interrupted_driver_resumes(project, drivers, cluster) -> None:
    gate = project / "gate"
    first = drivers.start("run", "wide", "--run-id", "r1", "--no-track", "--batch-size", "1",
                          CHARED_TEST_DELAY_S="0.02", CHARED_TEST_GATE=str(gate))
    actors = drivers.actor_pids(first)
    wait_for(lambda: len(record_lines(project)) >= 2 or first.poll() is not None, "two records")
    gate.touch()  # hold the first driver mid-run
    code, _, err = drivers.run("run", "wide", "--run-id", "r1", "--no-track")
    assert code == 2, err
    assert error_lines(err) == [f"error: run 'r1' is in use by another process (pid {first.pid}); wait for it "
                                "to finish, or start a new run with another --run-id"]
    written = record_lines(project)
    first.send_signal(signal.SIGTERM)  # the driver alone, as `kill` would
    code, _, err = drivers.finish(first)
    assert code == 130, err
    wait_for(lambda: not any(alive(pid) for pid in actors), "the driver's actors to be gone")
    assert record_lines(project) == written  # nothing lost, nothing half-written
    gate.unlink()
    code, out, err = drivers.run("run", "wide", "--run-id", "r1", "--no-track")
    assert code == 0, err
    assert f"{PAIRS - len(written)} new records" in err
    assert_complete(project, "r1")
    assert record_lines(project)[: len(written)] == written

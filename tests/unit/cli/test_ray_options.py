"""`chared run|ab --ray`: what goes wrong before any pair runs is one line, exit 2, and touches no run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from chared_flows import cli
from tests.support.processes import make_project
from tests.support.ray_cluster import free_port
from tests.support.scripted_cli import DEFAULT_SCRIPTS, accept_scripted_specs


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    make_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHARED_TEMPLATES_DIR", raising=False)
    monkeypatch.delenv("CHARED_WORKFLOWS_DIR", raising=False)
    accept_scripted_specs(DEFAULT_SCRIPTS, monkeypatch)
    return tmp_path


def run_cli(capsys, *argv: str) -> tuple[int, list[str]]:
    code = cli.main(["run", "tiny", "--run-id", "r1", "--no-track", *argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("error:")]


def test_without_the_extra_ray_is_one_line_naming_the_install(project, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    code, errors = run_cli(capsys, "--ray", "127.0.0.1:6379")
    assert code == 2
    assert errors == ["error: 'ray' is not installed; install it with: pip install 'chared-flows[ray]'"]
    assert not (project / "runs").exists()


@pytest.mark.parametrize("flag, value", [("--ray-actors", "2"), ("--ray-max-restarts", "1"),
                                         ("--ray-runtime-env", "{}")])
def test_ray_options_need_an_address(project, capsys, flag, value) -> None:
    code, errors = run_cli(capsys, flag, value)
    assert code == 2 and errors == [f"error: {flag} needs --ray ADDRESS (the Ray cluster to run on)"]


def test_an_address_where_no_cluster_answers_is_one_line_naming_the_fix(project, capsys) -> None:
    pytest.importorskip("ray")
    port = free_port()  # nothing listens there
    code, errors = run_cli(capsys, "--ray", f"127.0.0.1:{port}")
    assert code == 2 and len(errors) == 1
    assert errors[0].startswith(f"error: no Ray cluster answers at 127.0.0.1:{port} (")
    assert f"start one with `ray start --head --node-ip-address 127.0.0.1 --port {port}`" in errors[0]
    assert not (project / "runs").exists()  # refused before the run directory was made


@pytest.mark.parametrize("argv, message", [
    (["--ray-actors", "0"], "error: --ray-actors 0 must be at least 1"),
    (["--ray-max-restarts", "-1"], "error: --ray-max-restarts -1 must be 0 or more"),
    (["--ray-runtime-env", "{\"env_vars\": "], "error: --ray-runtime-env '{\"env_vars\": ' is not valid JSON"),
    (["--ray-runtime-env", "[1]"], "error: --ray-runtime-env '[1]' is neither a JSON object nor a file"),
])
def test_bad_ray_options_are_one_line(project, capsys, argv, message) -> None:
    pytest.importorskip("ray")
    code, errors = run_cli(capsys, "--ray", "127.0.0.1:1", *argv)
    assert code == 2 and len(errors) == 1 and errors[0].startswith(message), errors

"""Fixtures shared by the CLI tests."""

from __future__ import annotations

import pytest

import chared_flows.integrations.langchain as lc
from chared_flows.decoding import Member


@pytest.fixture
def no_model_loads(project, monkeypatch):
    """Every model load is recorded and refused: a check that passes must not need one.

    Needs the `project` fixture of the requesting module (tests/unit/cli/test_cli.py's),
    whose scripted loads it replaces.
    """
    loads: list[str] = []

    def refuse(spec, *args, **kwargs):
        loads.append(spec)
        raise AssertionError(f"model {spec!r} was loaded")

    monkeypatch.setattr(Member, "load", staticmethod(refuse))
    monkeypatch.setattr(lc, "_load_member", refuse)
    return loads

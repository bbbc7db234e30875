"""PromptLayer tracking: the real SDK against a local server, with the outbox in between."""

from __future__ import annotations

import collections
import dataclasses
import logging
import sqlite3
import time

import pytest

from chared_flows.errors import ConfigError, TrackingError
from chared_flows.tracking.outbox import Outbox, default_outbox_path
from chared_flows.tracking.promptlayer import PromptLayerTracker, sync_outbox
from tests.support.promptlayer_server import FakePromptLayer, closed_port_url


def last_errors(outbox: Outbox) -> list[str]:
    """What the outbox noted for items whose sending failed (read from its SQLite file)."""
    with sqlite3.connect(outbox.path) as db:
        return [row[0] for row in db.execute("SELECT last_error FROM items WHERE last_error != ''")]

KEY = "pl-secret-4f9a1c"


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMPTLAYER_API_KEY", KEY)
    monkeypatch.delenv("PROMPTLAYER_BASE_URL", raising=False)
    return tmp_path


@pytest.fixture
def server():
    with FakePromptLayer(api_key=KEY) as fake:
        yield fake


def run_through(tracker, run, records, undelivered: str | None = None) -> float:
    """Feed a run; return the slowest on_record call in seconds.

    `undelivered`: the run's end must raise a TrackingError matching it (items of this run
    were left in the outbox, so the CLI exits 3); None: it must not raise.
    """
    tracker.on_run_start(run)
    slowest = 0.0
    for record in records:
        start = time.perf_counter()
        tracker.on_record(record)
        slowest = max(slowest, time.perf_counter() - start)
    if undelivered is None:
        tracker.on_run_end(run, {}, [])
    else:
        with pytest.raises(TrackingError, match=undelivered) as raised:
            tracker.on_run_end(run, {}, [])
        assert KEY not in str(raised.value)
    return slowest


def idempotency_keys(server) -> list[str]:
    return [body["metadata"]["chared_idempotency_key"] for body in server.accepted_logs()]


def assert_each_once(server, records):
    keys = idempotency_keys(server)
    assert sorted(keys) == sorted(f"{r.run_id}:{r.variant}:{r.sample_id}" for r in records)
    assert len(set(keys)) == len(keys), "a generation was acknowledged twice"
    scores = collections.Counter(body["request_id"] for body in server.accepted_scores())
    assert all(n == 1 for n in scores.values()), scores
    # each record has one score in [0, 1] (exact_match), so one score per log
    assert len(scores) == len(records)


def test_all_generations_and_scores_arrive(env, server, run_record, records):
    tracker = PromptLayerTracker(env, base_url=server.url, call_timeout_s=5)
    run_through(tracker, run_record, records)
    assert_each_once(server, records)
    body = next(
        b for b in server.accepted_logs() if b["model"] == "chared_0.5" and b["metadata"]["sample_id"] == "s0"
    )
    assert body["metadata"]["members"] == "smollm2,gemma3"
    assert body["metadata"]["weights"] == "0.5,0.5"
    assert body["prompt_name"] == "gsm8k_cot" and body["prompt_version_number"] == 3
    assert body["output"]["content"][0]["text"].startswith("The answer is")
    assert body["request_end_time"] - body["request_start_time"] == pytest.approx(0.5, abs=1e-3)
    assert {b["score"] for b in server.accepted_scores()} <= {0, 100}
    assert Outbox(default_outbox_path(env)).counts()["pending"] == 0


def test_server_down_keeps_everything_and_sync_sends_it_once(env, run_record, records):
    tracker = PromptLayerTracker(env, base_url=closed_port_url(), call_timeout_s=5, flush_timeout_s=10)
    waiting = len(records) + len({r.sample_id for r in records})  # a log per record, a group per sample
    slowest = run_through(tracker, run_record, records, undelivered=rf"^{waiting} PromptLayer item\(s\) of run")
    assert slowest < 0.5, "on_record must not wait for the network"
    assert Outbox(default_outbox_path(env)).counts("log")["pending"] == len(records)
    with FakePromptLayer(api_key=KEY) as fake:
        result = sync_outbox(env, base_url=fake.url)
        assert result.pending == 0 and result.failed == 0
        again = sync_outbox(env, base_url=fake.url)
        assert again.sent == 0
        assert_each_once(fake, records)


def test_500s_are_retried_later_not_lost(env, server, run_record, records, caplog):
    server.set_mode("500")
    tracker = PromptLayerTracker(env, base_url=server.url, call_timeout_s=5)
    with caplog.at_level(logging.WARNING):
        run_through(tracker, run_record, records, undelivered="were not delivered")
    outbox = Outbox(default_outbox_path(env))
    assert outbox.counts("log")["pending"] == len(records)
    assert any("boom" in err for err in last_errors(outbox))
    assert "not sent" in caplog.text
    server.set_mode("ok")
    assert sync_outbox(env, base_url=server.url).pending == 0
    assert_each_once(server, records)


def test_hung_server_does_not_block_and_nothing_is_sent_twice(env, server, run_record, records):
    server.set_mode("hung")
    tracker = PromptLayerTracker(env, base_url=server.url, call_timeout_s=0.5, flush_timeout_s=3)
    start = time.perf_counter()
    slowest = run_through(tracker, run_record, records, undelivered="were not delivered")
    assert slowest < 0.5
    assert time.perf_counter() - start < 3 + 1.0, "run end must be bounded by flush_timeout_s"
    outbox = Outbox(default_outbox_path(env))
    assert outbox.counts("log")["pending"] == len(records)
    # While the first request is still hanging, its lease keeps sync away from it.
    first = f"{records[0].run_id}:{records[0].variant}:{records[0].sample_id}"
    result = sync_outbox(env, base_url=server.url, call_timeout_s=0.5)
    assert result.timed_out == 1 and result.sent == 0
    server.set_mode("ok")  # releases the hung handlers (they drop their connections)
    for _ in range(100):  # the abandoned calls finish on their own (SDK retries on a dropped connection)
        if outbox.claim(first, lease_s=0) is not None or first in outbox.keys("done"):
            break
        time.sleep(0.05)
    expire_leases(outbox)
    assert sync_outbox(env, base_url=server.url).pending == 0
    assert_each_once(server, records)


def expire_leases(outbox: Outbox) -> None:
    """Stand-in for waiting out the leases of requests abandoned in a previous process."""
    with outbox._db() as db:
        db.execute("UPDATE items SET lease_until = 0")


def test_next_run_start_sends_what_an_earlier_run_left(env, server, run_record, records):
    down = PromptLayerTracker(env, base_url=closed_port_url(), call_timeout_s=5)
    run_through(down, run_record, records[:3], undelivered="were not delivered")
    up = PromptLayerTracker(env, base_url=server.url, call_timeout_s=5)
    run_through(up, run_record, records[3:])
    assert_each_once(server, records)


def test_wrong_key_is_dropped_not_retried_forever(env, server, run_record, records, monkeypatch):
    monkeypatch.setenv("PROMPTLAYER_API_KEY", "wrong-key")
    tracker = PromptLayerTracker(env, base_url=server.url, call_timeout_s=5, max_consecutive_failures=100)
    run_through(tracker, run_record, records[:2], undelivered="refused .* for good")
    outbox = Outbox(default_outbox_path(env))
    assert outbox.counts("log")["dead"] == 2
    monkeypatch.setenv("PROMPTLAYER_API_KEY", KEY)  # even with the right key now, dead items stay dead
    assert sync_outbox(env, base_url=server.url).pending == 0
    assert outbox.counts("log")["dead"] == 2 and server.accepted_logs() == []


def test_missing_api_key_names_the_variable(env, monkeypatch):
    monkeypatch.delenv("PROMPTLAYER_API_KEY")
    with pytest.raises(ConfigError, match="PROMPTLAYER_API_KEY"):
        PromptLayerTracker(env)
    with pytest.raises(ConfigError, match="PROMPTLAYER_API_KEY"):
        sync_outbox(env)


def test_api_key_is_never_written_anywhere(env, run_record, records, caplog):
    with caplog.at_level(logging.DEBUG):
        for url in (closed_port_url(),):
            run_through(PromptLayerTracker(env, base_url=url, call_timeout_s=5), run_record, records,
                        undelivered="were not delivered")
        with FakePromptLayer(api_key=KEY) as fake:
            fake.set_mode("500")
            sync_outbox(env, base_url=fake.url)
        # The same run through MLflow and a report, in the same environment.
        from chared_flows.evaluation.ab import compare
        from chared_flows.reports import write_report
        from chared_flows.tracking.mlflow import MlflowTracker

        report = write_report(records, run_record, compare(records, run_record.variants).to_dict(),
                              env / "report")
        run_through_mlflow = MlflowTracker(f"sqlite:///{env}/.chared/mlflow.db")
        run_through_mlflow.on_run_start(run_record)
        for record in records:
            run_through_mlflow.on_record(record)
        run_through_mlflow.on_run_end(run_record, {}, report)
    assert KEY not in caplog.text
    written = [p for p in env.rglob("*") if p.is_file()]
    assert written, "expected an outbox on disk"
    for path in written:
        assert KEY.encode() not in path.read_bytes(), path


TEMPLATE = ("gsm8k_cot", 3, "Question: {question}\nAnswer:")


def test_templates_are_published_and_each_request_names_its_version(env, server, run_record, records):
    tracker = PromptLayerTracker(env, base_url=server.url, call_timeout_s=5, prompts=[TEMPLATE])
    run_through(tracker, run_record, records)
    (published,) = server.templates["gsm8k_cot"]
    assert published["prompt_template"]["input_variables"] == ["question"]
    assert published["metadata"]["chared_version"] == "3"
    logs = server.accepted_logs()
    assert {(b["prompt_name"], b["prompt_version_number"]) for b in logs} == {("gsm8k_cot", published["version"])}
    assert server.template_text("gsm8k_cot", logs[0]["prompt_version_number"]) == TEMPLATE[2]
    # another run with the same template publishes nothing new; a changed text is a new version
    run_through(PromptLayerTracker(env, base_url=server.url, call_timeout_s=5, prompts=[TEMPLATE]), run_record, records)
    assert len(server.templates["gsm8k_cot"]) == 1
    changed = ("gsm8k_cot", 4, "Q: {question}\nA:")
    run_through(PromptLayerTracker(env, base_url=server.url, call_timeout_s=5, prompts=[changed]),
                dataclasses.replace(run_record, template_version=4), [dataclasses.replace(records[0], template_version=4)])
    assert [v["version"] for v in server.templates["gsm8k_cot"]] == [1, 2]
    assert server.accepted_logs()[-1]["prompt_version_number"] == 2


def test_requests_carry_the_rendered_prompt_the_call_window_and_tokens(env, server, run_record, records):
    run_through(PromptLayerTracker(env, base_url=server.url, call_timeout_s=5), run_record, records)
    record = next(r for r in records if r.variant == "chared_0.5" and r.sample_id == "s2")
    body = next(b for b in server.accepted_logs()
                if b["model"] == "chared_0.5" and b["metadata"]["sample_id"] == "s2")
    assert body["input"]["content"][0]["text"] == record.prompt == "Question: What is 2+2?\nAnswer:"
    assert body["request_end_time"] == record.timestamp  # the record's time is when the call ended
    assert body["request_start_time"] == pytest.approx(record.timestamp - record.latency_s)
    assert (body["input_tokens"], body["output_tokens"]) == (18, 14)  # both members' tokens


def test_each_samples_variants_share_one_group(env, server, run_record, records):
    run_through(PromptLayerTracker(env, base_url=server.url, call_timeout_s=5), run_record, records)
    sample_of = {rid: body["metadata"]["sample_id"] for rid, body in server.requests.items()}
    variant_of = {rid: body["model"] for rid, body in server.requests.items()}
    assert len(server.groups) == 3
    for members in server.groups.values():
        assert len({sample_of[r] for r in members}) == 1
        assert sorted(variant_of[r] for r in members) == ["chared_0.5", "gemma", "smollm2"]


def test_a_retried_pair_keeps_one_final_version(env, run_record, records):
    errored = dataclasses.replace(records[0], error="ModelLoadError: out of memory", output="", scores={})
    # PromptLayer down while the pair errors, then the retry succeeds: only the success is ever sent
    down = PromptLayerTracker(env, base_url=closed_port_url(), call_timeout_s=5, flush_timeout_s=10)
    run_through(down, run_record, [errored], undelivered="were not delivered")
    run_through(down, run_record, [records[0]], undelivered="were not delivered")
    outbox = Outbox(default_outbox_path(env))
    assert outbox.counts("log") == {"pending": 1, "done": 0, "dead": 0}
    with FakePromptLayer(api_key=KEY) as fake:
        sync_outbox(env, base_url=fake.url)
        (body,) = fake.accepted_logs()
        assert body["status"] == "SUCCESS" and body["metadata"]["chared_version"] == "2"
        assert len(fake.accepted_scores()) == 1

    # PromptLayer up: the error was sent, so the success is sent too and says what it supersedes
    other = dataclasses.replace(records[1], error="ModelLoadError: out of memory", output="", scores={})
    with FakePromptLayer(api_key=KEY) as fake:
        up = PromptLayerTracker(env, base_url=fake.url, call_timeout_s=5)
        run_through(up, run_record, [other])
        run_through(up, run_record, [records[1]])
        run_through(up, run_record, [records[1]])  # replayed on a later resume: nothing new
        first, second = fake.accepted_logs()
        assert (first["status"], second["status"]) == ("ERROR", "SUCCESS")
        assert second["metadata"]["chared_supersedes"] == str(next(iter(fake.requests)))
    assert outbox.counts("log") == {"pending": 0, "done": 2, "dead": 0}  # one row per pair

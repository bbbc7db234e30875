"""`chared`: the command line. The composition root: nothing imports this module.

Each subcommand is a pair of functions, `add_<name>(subparsers)` and `cmd_<name>(args)`,
registered in COMMANDS; adding `ab` or `sync` later means adding one more pair.
Exit codes: 0 ok; 2 a user error (CharedError: one line on stderr; tracebacks are kept for
real bugs); 3 the results are on disk but a tracker misses part of them (one line per
tracker; `chared sync` completes it); 4 every pair of a variant failed (one line per such
variant); 130 interrupted (Ctrl-C or SIGTERM: the run's
trackers are told, so its MLflow runs end KILLED).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from chared_flows.errors import CharedError, ConfigError

EXIT_USER_ERROR = 2
EXIT_TRACKING = 3
EXIT_VARIANT_FAILED = 4
EXIT_INTERRUPTED = 130


# --- shared options -------------------------------------------------------------


def templates_dir(args: argparse.Namespace) -> Path:
    return Path(args.templates_dir or os.environ.get("CHARED_TEMPLATES_DIR") or "templates")


def workflows_dir(args: argparse.Namespace) -> Path:
    return Path(args.workflows_dir or os.environ.get("CHARED_WORKFLOWS_DIR") or "workflows")


def template_store(args: argparse.Namespace):
    from chared_flows.prompts import TemplateStore

    return TemplateStore(templates_dir(args))


def workflow_store(args: argparse.Namespace):
    from chared_flows.flow.loader import WorkflowStore

    return WorkflowStore(workflows_dir(args), template_store(args))


def parse_list(text: str | None, what: str) -> list[str] | None:
    if text is None:
        return None
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise ConfigError(f"--{what} {text!r} has an empty item; write a comma-separated list like a,b")
    return items


def parse_weights(text: str | None) -> list[float] | None:
    items = parse_list(text, "weights")
    if items is None:
        return None
    try:
        return [float(item) for item in items]
    except ValueError:
        raise ConfigError(f"--weights {text!r} must be comma-separated numbers, like 0.5,0.5") from None


def stop_text(arg: str) -> str:
    r"""A --stop argument as text: argv bytes as UTF-8, then `\n` and the other escapes as characters."""
    from chared_flows.decoding import argv_text, unescape

    return unescape(argv_text(arg, "a --stop argument"), "a --stop argument")


# --- decoding options, derived from the engine's DecodeFields ----------------------


def _field_kind(annotation) -> tuple[str, tuple]:
    """(kind, choices) of a DecodeFields annotation: literal, bool, int, float, floats, strings."""
    import types
    import typing

    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "literal", args
    if origin is tuple:
        return ("floats" if args[0] is float else "strings"), ()
    return {bool: "bool", int: "int", float: "float"}[annotation], ()


def add_decoding_options(p: argparse.ArgumentParser) -> None:
    """One flag per engine decoding field, with the engine's description, default and choices."""
    from chared_flows.decoding.config import DecodeFields

    group = p.add_argument_group("decoding (every DecodeConfig field; unset flags take the default shown)")
    for name, info in DecodeFields.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind, choices = _field_kind(info.annotation)
        default = info.default if info.default not in ((), None) else "unset"
        text = f"{info.description} (default: {default})"
        if kind == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif kind == "literal":
            group.add_argument(flag, choices=choices, default=None, help=text)
        elif kind == "strings":
            # subtle: no type= here: argparse would turn our ConfigError into a usage error and
            # print the raw argument, whose lone surrogates stderr may fail to encode
            group.add_argument(flag, action="append", default=None, metavar="TEXT",
                               help=text + r"; repeatable; backslash escapes are read ('\n' is a newline)")
        elif kind == "floats":
            group.add_argument(flag, default=None, metavar="W1,W2,...", help=text)
        else:
            group.add_argument(flag, type={"int": int, "float": float}[kind], default=None, help=text)


def decoding_values(args: argparse.Namespace) -> dict:
    """The decoding fields the user set on the command line (parsed, not yet validated)."""
    from chared_flows.decoding.config import DecodeFields

    out = {}
    for name in DecodeFields.model_fields:
        value = getattr(args, name)
        if value is None:
            continue
        if name == "weights":
            value = parse_weights(value)
        elif name == "stop":
            value = [stop_text(v) for v in value]
        out[name] = value
    return out


def read_prompt(arg: str, escapes: bool = False) -> str:
    """The prompt argument, or stdin for '-', as UTF-8 text (text.py); with `escapes`, `\n` etc. read."""
    from chared_flows.decoding import argv_text, decode_utf8, unescape

    text = decode_utf8(sys.stdin.buffer.read(), "stdin") if arg == "-" else argv_text(arg, "the prompt argument")
    return unescape(text, "the prompt") if escapes else text


# --- generate ---------------------------------------------------------------------


def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="decode PROMPT with one model or a CharED ensemble, streaming")
    p.add_argument("prompt", help="the prompt text ('-' reads it from stdin, as UTF-8)")
    p.add_argument("--models", default=None,
                   help="comma-separated member specs: an alias (smollm2, gemma3-270m), a HF model "
                        "directory, a .gguf file or a hub id (default: smollm2,gemma3-270m)")
    p.add_argument("--combination", metavar="URI",
                   help="decode with a registered combination, e.g. models:/NAME@champion (its members, weights "
                        "and decoding; only per-call flags such as --max-new-chars may change it)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in each member's chat template")
    p.add_argument("--device", default="cpu", help="where the models run: cpu, cuda, cuda:N, mps or auto (default cpu)")
    p.add_argument("-e", "--escapes", action="store_true",
                   help=r"read backslash escapes in the prompt ('\n' a newline, '\t' a tab, '\\' a backslash, "
                        r"'\uHHHH'); without it the prompt is taken literally (bash's $'...' also works)")
    add_decoding_options(p)
    p.set_defaults(handler=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from chared_flows.decoding import DecodeConfig, Ensemble, Member

    if args.combination:
        return generate_combination(args)
    specs = parse_list(args.models or "smollm2,gemma3-270m", "models") or []
    config = DecodeConfig.build(**decoding_values(args))  # every value checked before any model loads
    if config.weights is not None and len(config.weights) != len(specs):
        raise ConfigError(f"--weights has {len(config.weights)} values for {len(specs)} models ({', '.join(specs)})")
    prompt = read_prompt(args.prompt, args.escapes)
    members = [Member.load(spec, chat=args.chat, device=args.device) for spec in specs]
    streaming = Ensemble(members, config).start_stream(prompt)
    for chunk in streaming:  # the engine never streams a matched stop string
        sys.stdout.write(chunk)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def generate_combination(args: argparse.Namespace) -> int:
    from chared_flows.combinations.registry import load_combination
    from chared_flows.decoding import Ensemble
    from chared_flows.decoding.config import CALL_FIELDS

    if args.models:
        raise ConfigError("--models and --combination contradict each other; a combination names its own members")
    values = decoding_values(args)
    fixed = sorted(k for k in values if k not in CALL_FIELDS)
    if fixed:
        raise ConfigError(f"--{fixed[0].replace('_', '-')} would change the combination {args.combination}; "
                          f"per call you may set only: {', '.join('--' + f.replace('_', '-') for f in CALL_FIELDS)}")
    registered = load_combination(args.combination)
    combo = registered.combination
    config = combo.decoding.replace(**values)
    prompt = read_prompt(args.prompt, args.escapes)
    members = combo.load_members(device=args.device, where=registered.where)
    if args.chat:
        members = [m.with_chat(True) for m in members]
    print(f"{registered.where}: {combo.describe()}", file=sys.stderr)
    for chunk in Ensemble(members, config).start_stream(prompt):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


# --- promote ----------------------------------------------------------------------


def add_promote(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("promote", help="register a variant of an A/B run as a versioned combination in MLflow's "
                                       "Model Registry (models:/NAME@ALIAS)")
    p.add_argument("run_id", metavar="RUN_ID", help="the A/B run (a directory under --out)")
    p.add_argument("variant", metavar="VARIANT", help="the variant of that run to ship")
    p.add_argument("--name", required=True, help="the registered model's name")
    p.add_argument("--alias", help="point this alias at the version, e.g. champion")
    p.add_argument("--force", action="store_true", help="promote even if the variant has error rows")
    p.add_argument("--out", default="runs", help="directory of run results (default: ./runs)")
    p.set_defaults(handler=cmd_promote)


def cmd_promote(args: argparse.Namespace) -> int:
    from chared_flows.combinations.evidence import combination_from_run
    from chared_flows.combinations.registry import promote

    combo = combination_from_run(Path(args.out) / args.run_id, args.variant, template_store(args), force=args.force)
    result = promote(combo, args.name, alias=args.alias)
    state = "registered" if result.created else "already registered (same content)"
    alias = f", alias {args.alias!r}" if args.alias else ""
    print(f"{args.run_id}/{args.variant} -> {result.model_uri} {state}{alias}: {combo.describe()} "
          f"{combo.content_hash[:19]}", file=sys.stderr)
    print(f"models:/{args.name}@{args.alias}" if args.alias else result.model_uri)
    return publish_release(combo, args.alias, result.model_uri)


def publish_release(combo, alias: str | None, model_uri: str) -> int:
    """With PromptLayer configured, the template version gets the alias as its release label."""
    from chared_flows.tracking.promptlayer import API_KEY_ENV

    if not alias or not os.environ.get(API_KEY_ENV):
        return 0
    from chared_flows.combinations.live_promptlayer import publish_release as publish

    try:
        publish(combo, alias, model_uri)
    except CharedError as exc:
        print(f"error: {' '.join(str(exc).split())}; {model_uri} is registered; run the same `chared promote` "
              "again to publish the label", file=sys.stderr)
        return EXIT_TRACKING
    print(f"promptlayer: {combo.template.ref} published with release label {alias!r}", file=sys.stderr)
    return 0


# --- run --------------------------------------------------------------------------


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `run` and `ab`: which samples, where results go, where runs are logged."""
    p.add_argument("workflow", help="workflow name (in the workflows dir) or path to a .yaml file")
    p.add_argument("--limit", type=int, help="only the first N samples")
    p.add_argument("--run-id", help="reuse an id to resume an interrupted run")
    p.add_argument("--out", default="runs", help="directory for run results (default: ./runs)")
    p.add_argument("--dataset-path", help="replace the dataset's 'path' (e.g. your own GSM8K JSONL copy)")
    p.add_argument("--tracker", action="append", choices=TRACKERS, default=None,
                   help="log to this tracker (repeatable); replaces the workflow's 'trackers' list")
    p.add_argument("--no-track", action="store_true", help="log to no tracker (results still go to --out)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own, i.e. $OMP_NUM_THREADS)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="pairs decoding at once; their forward passes run batched (default 8; 1: one at a time)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress on stderr (default: a bar on a terminal, else a line every 30 s)")
    ray = p.add_argument_group("Ray (extra: ray): pairs decode on a cluster; this process keeps the records and trackers")
    ray.add_argument("--ray", metavar="ADDRESS",
                     help="run the pairs on the Ray cluster at ADDRESS (its head's host:port, or 'auto')")
    ray.add_argument("--ray-actors", type=int, metavar="N",
                     help="Ray actors, each loading its variants' members once and decoding --batch-size pairs "
                          "at once with --threads torch threads (default 1)")
    ray.add_argument("--ray-max-restarts", type=int, metavar="N",
                     help="times Ray restarts a dead actor and retries its pairs before this process "
                          "starts a new actor and resubmits them (default 3)")
    ray.add_argument("--ray-runtime-env", metavar="JSON",
                     help="a Ray runtime_env for the actors, as JSON text or a .json file "
                          "(env_vars, working_dir, pip, worker_process_setup_hook, ...)")


TRACKERS = ("mlflow", "promptlayer")


def tracker_names(args: argparse.Namespace, workflow_trackers: list[str]) -> list[str]:
    if args.no_track:
        if args.tracker:
            raise ConfigError("--no-track and --tracker contradict each other; keep one")
        return []
    return list(dict.fromkeys(args.tracker or workflow_trackers))


def build_trackers(names: list[str], resolved) -> object:
    """A FanOut over the named trackers (built before any model loads: a bad config fails fast)."""
    from chared_flows.tracking import make_trackers

    template = resolved.template
    prompts = [(template.name, template.version, template.template)]
    options = {"mlflow": {"prompts": prompts}, "promptlayer": {"prompts": prompts}}
    return make_trackers(names, options={k: v for k, v in options.items() if k in names})


def set_threads(threads: int | None) -> int:
    import torch

    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads {threads} must be at least 1")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def dataset_overrides(args: argparse.Namespace) -> dict:
    if not getattr(args, "dataset_path", None):
        return {}
    if not Path(args.dataset_path).expanduser().is_file():
        raise ConfigError(f"--dataset-path {args.dataset_path!r} is not a file")
    return {"path": args.dataset_path}


def pair_executor(args: argparse.Namespace):
    """Where the pairs run: threads in this process, or Ray actors with `--ray` (checked before models load)."""
    from chared_flows.flow.pairs import LocalPairs

    if not args.ray:
        for flag, value in (("--ray-actors", args.ray_actors), ("--ray-max-restarts", args.ray_max_restarts),
                            ("--ray-runtime-env", args.ray_runtime_env)):
            if value is not None:
                raise ConfigError(f"{flag} needs --ray ADDRESS (the Ray cluster to run on)")
        return LocalPairs
    import functools

    from chared_flows.flow.distributed import (
        DEFAULT_MAX_RESTARTS, RayPairs, check_reachable, parse_runtime_env, require_ray,
    )

    require_ray()
    options = dict(address=args.ray, actors=1 if args.ray_actors is None else args.ray_actors, threads=args.threads,
                   max_restarts=DEFAULT_MAX_RESTARTS if args.ray_max_restarts is None else args.ray_max_restarts,
                   runtime_env=parse_runtime_env(args.ray_runtime_env))
    RayPairs(None, 1, **options)  # checks the values now, before anything runs
    check_reachable(args.ray)  # a dead address is one line before the run directory is touched
    return functools.partial(RayPairs, **options)


def refuse_busy_run(argv: list[str]) -> None:
    """`run`/`ab` on a run id another process holds is refused before anything heavy is imported.

    subtle: building the parser imports the engine (torch: seconds), so the run id and
    --out are picked from argv by hand here; the runner takes the real lock later anyway.
    """
    from chared_flows.flow.results import RunLock  # stdlib only

    values: dict[str, str] = {}
    words, i = [], 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in ("--run-id", "--out", "--templates-dir", "--workflows-dir"):
            if not eq:
                i += 1
                value = argv[i] if i < len(argv) else ""
            values[name] = value
        elif arg in ("-h", "--help"):
            return
        elif not arg.startswith("-"):
            words.append(arg)
        i += 1
    if words[:1] in (["run"], ["ab"]) and values.get("--run-id"):
        RunLock(Path(values.get("--out") or "runs") / values["--run-id"]).check_free()


def make_runner(args: argparse.Namespace, *, interleave: bool = False, finisher=None, timed_samples: int = 0):
    """The WorkflowRunner for `run` and `ab`, with its trackers; returns (runner, fanout)."""
    from chared_flows.flow.runner import WorkflowRunner

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit} must be at least 1")
    executor = pair_executor(args)
    overrides = dataset_overrides(args)
    chosen = None if not (args.no_track or args.tracker) else tracker_names(args, [])
    checked = preflight(args, overrides, limit=args.limit, trackers=chosen)  # = `chared workflows validate`
    resolved, names = checked.resolved, checked.trackers
    fanout = build_trackers(names, resolved)
    runner = WorkflowRunner(
        resolved, out_dir=args.out, run_id=args.run_id, limit=args.limit, sinks=[fanout],
        progress=not args.no_progress, dataset_overrides=overrides,
        interleave=interleave, finisher=finisher, batch_size=args.batch_size, executor=executor,
        timed_samples=timed_samples,
    )
    threads = set_threads(args.threads)
    where = f"torch threads: {threads}" if not args.ray else \
        f"on Ray at {args.ray}: {args.ray_actors or 1} actor(s), {args.threads or 1} torch thread(s) each"
    print(
        f"run {runner.run_id}: {len(resolved.variants)} variants -> {runner.results.path} "
        f"(trackers: {', '.join(names) or 'none'}; {where})",
        file=sys.stderr,
    )
    return runner, fanout


def preflight(args: argparse.Namespace, overrides: dict, *, limit: int | None = None, trackers=None):
    """The checks `run`, `ab` and `workflows validate` share, before any model loads (flow/preflight.py)."""
    from chared_flows.flow.preflight import preflight as check

    name = args.workflow if hasattr(args, "workflow") else args.name
    return check(workflow_store(args), name, dataset_overrides=overrides, limit=limit, trackers=trackers)


def drain(runner) -> int:
    """Run every pending pair; per-sample errors are printed and kept, not fatal."""
    new = 0
    for record in runner.run():
        new += 1
        if record.error:
            print(f"  {record.variant} {record.sample_id}: {record.error}", file=sys.stderr)
    return new


def report_tracker_failures(fanout, runner) -> int:
    """One line per tracker that failed; the run is marked for `chared sync`; the exit code."""
    from chared_flows.flow.sync import mark_pending

    failed = fanout.failed() if hasattr(fanout, "failed") else {}
    if not failed:
        return 0
    mark_pending(runner.run_dir, list(failed))
    n = len(runner.results.read())
    for name, message in failed.items():
        message = message.removeprefix("TrackingError: ")
        # PromptLayer's items wait in one outbox for every run: a plain `chared sync` sends them
        how = "`chared sync`" if name == "promptlayer" else \
            f"`chared sync --run-id {runner.run_id} --out {runner.run_dir.parent}`"
        print(
            f"error: tracker {name}: {' '.join(message.split())[:400]}; the run's {n} records are safe in "
            f"{runner.results.path}; complete {name} later with {how}",
            file=sys.stderr,
        )
    return EXIT_TRACKING


def report_failed_variants(runner, code: int) -> int:
    """One line per variant none of whose pairs succeeded: its results would be an empty column, not a result."""
    by_variant: dict[str, list] = {}
    for record in runner.results.read():
        by_variant.setdefault(record.variant, []).append(record)
    failed = {name: rows for name, rows in by_variant.items() if rows and all(r.error for r in rows)}
    for name, rows in failed.items():
        first = " ".join(str(rows[0].error).split())[:200]
        print(
            f"error: variant {name}: all {len(rows)} pairs failed (first: {first}); fix the cause and rerun "
            f"`--run-id {runner.run_id}` to retry them",
            file=sys.stderr,
        )
    return EXIT_VARIANT_FAILED if failed else code


def drain_and_report(runner, fanout) -> tuple[int, int]:
    """drain(), then the trackers' failures, even when the run was interrupted: (new records, exit code).

    subtle: stdout carries the command's result only (the summary JSON, the report paths),
    so while pairs run whatever a library prints there goes to stderr: Ray's driver prints
    its workers' failures ("Task PairActor.run failed ... will be retried") to stdout from a
    thread of its own, which would make `chared run ... | jq` fail.
    """
    new = 0
    with contextlib.redirect_stdout(sys.stderr):
        try:
            new = drain(runner)
        finally:
            code = report_tracker_failures(fanout, runner)
    return new, code


def add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a workflow over its dataset, all variants")
    add_run_options(p)
    p.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from chared_flows.flow.runner import summarize

    runner, fanout = make_runner(args)
    new, code = drain_and_report(runner, fanout)
    print(f"{new} new records", file=sys.stderr)
    print(json.dumps(summarize(runner.results.read()), indent=2))
    return report_failed_variants(runner, code)


# --- ab ---------------------------------------------------------------------------


def add_ab(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ab", help="run every variant of a workflow (resumable), then compare them: report with CIs and tests"
    )
    add_run_options(p)
    p.add_argument("--report-dir", help="where the report goes (default: <out>/<run-id>/report)")
    p.add_argument("--timed-samples", type=int, default=4, metavar="N",
                   help="the first N samples of every variant decode alone (batch 1), one variant after "
                        "another; latency and chars/s are compared on them (default 4; 0: timings from the "
                        "batches, which never mix variants)")
    p.add_argument("--effect", action="append", default=[], metavar="METRIC=VALUE",
                   help="the difference worth detecting on METRIC, for the report's samples-needed column "
                        "(repeatable; default: 0.05 for 0/1 metrics, else 5%% of the best single model's mean)")
    live = p.add_argument_group("live A/B (`chared ab --live EXPERIMENT`): the report from a LiveRouter's traces")
    live.add_argument("--live", action="store_true",
                      help="read WORKFLOW as a live experiment's name and report on its MLflow traces and feedback")
    live.add_argument("--since", help="only traces since this time: ISO (2026-12-02T10:00, UTC) or an age (24h, 7d)")
    live.add_argument("--control", help="the control arm (default: the one the router recorded)")
    p.set_defaults(handler=cmd_ab)


def require_statistics() -> None:
    from chared_flows.evaluation import stats

    stats._scipy_stats()
    stats._statsmodels()


def parse_effects(items: list[str]) -> dict[str, float]:
    effects = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not sep or not name or not math.isfinite(number) or number <= 0:
            raise ConfigError(f"--effect {item!r} must be METRIC=VALUE with a positive number, e.g. exact_match=0.1")
        effects[name] = number
    return effects


def warn_unused_effects(effects: dict[str, float], metrics: list[str]) -> None:
    """An --effect for a metric the run does not have changes nothing: say so (a typo, usually)."""
    for name in sorted(set(effects) - set(metrics)):
        print(f"warning: --effect {name}={effects[name]:g} names no metric of this run (its metrics: "
              f"{', '.join(metrics) or 'none'}); it was not used", file=sys.stderr)


def cmd_ab(args: argparse.Namespace) -> int:
    from chared_flows.evaluation.ab import compare, metric_names, summary_entries
    from chared_flows.reports import verdict_table_text, write_report

    if args.live:
        return ab_live(args)
    if args.since or args.control:
        raise ConfigError("--since and --control apply to a live experiment; add --live")
    effects = parse_effects(args.effect)
    require_statistics()  # before any pair runs: the comparison needs scipy and statsmodels at the end
    made: dict[str, Any] = {}

    def finisher(run, records):
        # The report is written before the trackers' on_run_end, so MLflow logs its files
        # on the parent run together with the results, and the comparisons as metrics.
        warn_unused_effects(effects, metric_names(records))
        ab = compare(records, run.variants, effects=effects).to_dict()
        out_dir = Path(args.report_dir) if args.report_dir else runner.run_dir / "report"
        made["files"], made["ab"] = write_report(records, run, ab, out_dir), ab
        return made["files"], summary_entries(ab)

    if args.timed_samples < 0:
        raise ConfigError(f"--timed-samples {args.timed_samples} must be at least 0 (0: timings from the batches)")
    runner, fanout = make_runner(args, interleave=True, finisher=finisher,
                                 timed_samples=0 if args.ray else args.timed_samples)
    started = time.perf_counter()
    new, code = drain_and_report(runner, fanout)
    files = made.get("files", [])
    print(f"{new} new records in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if files:
        print(f"report: {files[0].resolve()}")
        print(f"        {files[1].resolve()}")
        print()
        print(verdict_table_text(made["ab"]))
    return report_failed_variants(runner, code)


def ab_live(args: argparse.Namespace) -> int:
    """`chared ab --live EXPERIMENT`: unpaired comparisons of each arm with the control, from MLflow traces."""
    from chared_flows.combinations.live import parse_since, report_from_traces
    from chared_flows.combinations.live_stats import format_report

    report, n = report_from_traces(args.workflow, parse_since(args.since), args.control)
    print(f"{n} traces of live experiment {args.workflow!r}", file=sys.stderr)
    print(format_report(report))
    if args.report_dir:
        out = Path(args.report_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "live.json").write_text(json.dumps(report.to_dict(), indent=2, default=str), encoding="utf-8")
        print(f"report: {(out / 'live.json').resolve()}")
    return 0


# --- sync -------------------------------------------------------------------------


def add_sync(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sync", help="complete what a tracker missed: MLflow runs from the run directory, the PromptLayer outbox"
    )
    p.add_argument("--run-id", help="replay this run to MLflow (default: every run under --out that MLflow missed)")
    p.add_argument("--out", default="runs", help="directory of run results (default: ./runs)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per PromptLayer call (default 10)")
    p.set_defaults(handler=cmd_sync)


def cmd_sync(args: argparse.Namespace) -> int:
    """MLflow for each run that missed it, then PromptLayer's outbox; "nothing to sync" if neither waits.

    Exit 0 when everything was sent; 3 when something is still missing (try again later);
    2 when PromptLayer items wait but PROMPTLAYER_API_KEY is not set (MLflow is synced first).
    """
    from chared_flows.flow.sync import clear_pending, pending_runs
    from chared_flows.tracking.promptlayer import API_KEY_ENV, waiting_items

    if args.timeout <= 0:
        raise ConfigError(f"--timeout {args.timeout} must be positive")
    out = Path(args.out)
    if args.run_id:
        run_dirs = [out / args.run_id]
        if not run_dirs[0].is_dir():
            raise ConfigError(f"no run {args.run_id!r} in {out}; give --out and --run-id of an existing run")
    else:
        run_dirs = pending_runs(out, "mlflow")
    waiting = waiting_items()  # 0 without creating an outbox: a user who never used PromptLayer needs no key
    if not run_dirs and not waiting:
        for run_dir in pending_runs(out, "promptlayer"):  # sent by a later run or an earlier sync
            clear_pending(run_dir, "promptlayer")
        print("nothing to sync")
        return 0
    code = 0
    for run_dir in run_dirs:
        code = max(code, sync_mlflow(args, run_dir))
    if waiting and not os.environ.get(API_KEY_ENV):
        print(f"error: {waiting} PromptLayer item(s) wait in the outbox but {API_KEY_ENV} is not set; "
              "export it and run `chared sync` again", file=sys.stderr)
        return max(code, EXIT_USER_ERROR)
    if waiting:
        left = sync_promptlayer(args.timeout)
        if left == 0:  # the outbox is empty: no run waits for PromptLayer any more
            for run_dir in pending_runs(out, "promptlayer"):
                clear_pending(run_dir, "promptlayer")
        code = max(code, left)
    return code


def sync_mlflow(args: argparse.Namespace, run_dir: Path) -> int:
    """Replay one run directory to MLflow; one line either way."""
    from chared_flows.errors import TrackingError
    from chared_flows.flow.sync import clear_pending, load_run, replay
    from chared_flows.tracking.mlflow import MlflowTracker

    run = load_run(run_dir)
    tracker = MlflowTracker(prompts=run_prompts(args, run))
    try:
        state = replay(run_dir, tracker)
    except TrackingError as exc:
        print(f"error: mlflow: run {run.run_id}: {' '.join(str(exc).split())[:300]}; try again later", file=sys.stderr)
        return EXIT_TRACKING
    clear_pending(run_dir, "mlflow")
    print(f"mlflow: run {run.run_id} synced ({state}) -> MLflow run {tracker.parent_run_id} at {tracker.tracking_uri}")
    return 0


def run_prompts(args: argparse.Namespace, run) -> list[tuple[str, int, str]]:
    """The run's template, to publish with it, if the templates dir still has that exact version."""
    try:
        spec = template_store(args).resolve(f"{run.template}@{run.template_version}")
    except CharedError:
        return []
    return [(spec.name, spec.version, spec.template)] if spec.content_hash == run.template_hash else []


def sync_promptlayer(timeout: float) -> int:
    from chared_flows.tracking.promptlayer import sync_outbox

    result = sync_outbox(call_timeout_s=timeout)
    print(
        f"sent {result.sent}, failed {result.failed}, timed out {result.timed_out}; "
        f"pending {result.pending}, dead {result.dead}"
    )
    if result.pending:
        print(f"error: {result.pending} item(s) still pending; run `chared sync` again later", file=sys.stderr)
        return EXIT_TRACKING
    return 0


# --- templates --------------------------------------------------------------------


def add_templates(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("templates", help="list, show or lock prompt templates")
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every template and its versions")
    show = actions.add_parser("show", help="print one template version")
    show.add_argument("ref", help="NAME@N or NAME@latest")
    actions.add_parser("lock", help="record the hash of every unlocked version in templates.lock.json")
    p.set_defaults(handler=cmd_templates)


def list_templates(store) -> int:
    """Every template with its versions; each version is loaded and checked against the lock.

    The good templates are listed (stdout) and each broken version is one `error:` line
    (stderr), so one bad file neither hides the others nor passes unnoticed: exit 2 if any.
    """
    broken = 0
    for name in store.names():
        good = {}
        for version in store.versions(name):
            try:
                good[version] = store.resolve(f"{name}@{version}")
            except CharedError as exc:
                broken += 1
                print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        if good:
            latest = good[max(good)]
            versions = ", ".join(f"v{v}" for v in sorted(good))
            print(f"{name}  ({versions})  {latest.description.strip()[:70]}")
    return EXIT_USER_ERROR if broken else 0


def cmd_templates(args: argparse.Namespace) -> int:
    store = template_store(args)
    if args.action == "list":
        return list_templates(store)
    elif args.action == "show":
        spec = store.resolve(args.ref)
        lock_state = "locked" if store.is_locked(spec) else "unlocked"
        print(f"# {spec.ref}  {spec.content_hash}  ({lock_state})")
        print(f"# variables: {', '.join(spec.input_variables)}")
        if spec.description:
            print(f"# {spec.description.strip()}")
        print(spec.template)
    elif args.action == "lock":
        added = store.lock_all()
        print("\n".join(f"locked {ref}" for ref in added) or "nothing to lock")
    return 0


# --- workflows --------------------------------------------------------------------


def add_workflows(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("workflows", help="list or validate workflows")
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every workflow in the workflows dir")
    validate = actions.add_parser(
        "validate", help="check a workflow and everything it refers to, as `chared run` would, loading no model"
    )
    validate.add_argument("name", help="workflow name or path to a .yaml file")
    validate.add_argument("--dataset-path", help="replace the dataset's 'path', as `chared run --dataset-path` does")
    p.set_defaults(handler=cmd_workflows)


def cmd_workflows(args: argparse.Namespace) -> int:
    store = workflow_store(args)
    if args.action == "list":
        for name in store.names():
            try:
                spec, _path, _locate = store.load(name)
            except CharedError as exc:
                print(f"{name}  (invalid: {exc})")
                continue
            # names only: a combination variant is not resolved (no registry, no file hashing) to be listed
            count = sum(len(c.names()) for c in spec.variants)
            print(f"{name}  v{spec.version}  {spec.template}  {count} variants")
    elif args.action == "validate":
        overrides = dataset_overrides(args)
        checked = preflight(args, overrides)  # exactly what `chared run` checks before loading models
        resolved, count = checked.resolved, checked.n_samples
        spec = resolved.spec
        print(f"ok: {spec.name} v{spec.version} ({resolved.path})")
        print(f"  template {resolved.template.ref} {resolved.template.content_hash}")
        print(f"  dataset  {json.dumps({**spec.dataset, **overrides}, default=str)}: {count} samples")
        print(f"  parser   {spec.parser}; scorers: {', '.join(s.name for s in spec.scorer_refs()) or 'none'}")
        print(f"  trackers {', '.join(checked.trackers) or 'none'}")
        for v in resolved.variants:
            weights = "" if v.weights is None else " weights " + "/".join(f"{w:g}" for w in v.weights)
            print(f"  variant  {v.name}: {'+'.join(v.members)}{weights} mode {v.mode}, rule {v.rule}")
    return 0


# --- main -------------------------------------------------------------------------

# --- ui ---------------------------------------------------------------------------


def add_ui(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="open MLflow's UI on this project's tracking store (.chared/mlflow.db)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.add_argument("--print-command", action="store_true", help="print the mlflow command instead of running it")
    p.set_defaults(handler=cmd_ui)


def ui_command(host: str, port: int) -> list[str]:
    """`mlflow ui` on the store `chared run` logs to (MLFLOW_TRACKING_URI, else ./.chared/mlflow.db).

    subtle: a plain `mlflow ui` opens ./mlruns, an empty store, since runs go to the SQLite
    file (the prompt registry needs a database store).
    """
    from chared_flows.tracking.mlflow import default_tracking_uri

    if not 0 < port < 65536:
        raise ConfigError(f"--port {port} must be between 1 and 65535")
    uri = default_tracking_uri()
    if "://" in uri and not uri.startswith(("sqlite:", "file:")) and not uri.startswith("postgresql"):
        raise ConfigError(f"MLFLOW_TRACKING_URI is {uri!r}, a tracking server: open that address in a browser; "
                          "`chared ui` serves a local store")
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]


def cmd_ui(args: argparse.Namespace) -> int:
    command = ui_command(args.host, args.port)
    if args.print_command:
        print(" ".join(command))
        return 0
    print(f"MLflow UI on http://{args.host}:{args.port} (store {command[command.index('--backend-store-uri') + 1]}); "
          "Ctrl-C stops it", file=sys.stderr)
    # the server's helper processes outlive it unless job execution is off (DESIGN.md)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    sys.stderr.flush()
    os.execve(command[0], command, env)  # the UI's process replaces this one: signals reach it directly
    return 0  # not reached


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_generate, add_run, add_ab, add_promote, add_sync, add_templates, add_workflows, add_ui,
]


class _Parser(argparse.ArgumentParser):
    """argparse whose messages survive arguments that are not valid UTF-8.

    subtle: argv bytes that are not UTF-8 arrive as lone surrogates; argparse quotes them in
    "unrecognized arguments: ..." and printing that raised UnicodeEncodeError (a traceback).
    """

    def _print_message(self, message: str, file=None) -> None:
        if message:
            super()._print_message(message.encode("utf-8", "backslashreplace").decode("utf-8"), file)


def build_parser() -> argparse.ArgumentParser:
    import chared_flows

    parser = _Parser(prog="chared", description="Character-wise ensemble decoding (CharED).")
    parser.add_argument("--version", action="version", version=f"chared {chared_flows.__version__}",
                        help="print the package version and exit")
    parser.add_argument("--templates-dir", help="default: $CHARED_TEMPLATES_DIR or ./templates")
    parser.add_argument("--workflows-dir", help="default: $CHARED_WORKFLOWS_DIR or ./workflows")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def join_dash_values(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`--weights -1,2` -> `--weights=-1,2`: argparse would take a value starting with '-' for a flag."""
    takes_value = {
        flag for action in _all_actions(parser) for flag in action.option_strings
        if action.nargs is None and action.const is None and not isinstance(action, argparse.BooleanOptionalAction)
    }
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in takes_value and i + 1 < len(argv) and argv[i + 1].startswith("-") and argv[i + 1] != "-" \
                and not argv[i + 1].startswith("--"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def _all_actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_actions(sub)


def setup_logging() -> None:
    """The library's own INFO lines (one per model load) on stderr, nothing else."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("chared_flows")
    if not logger.handlers:
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _interrupt(signum: int, frame) -> None:
    # subtle: SIGTERM (what `kill`, docker and CI send) would end Python at once, leaving the
    # run's MLflow runs RUNNING forever; as KeyboardInterrupt it unwinds like Ctrl-C, the
    # runner tells its trackers (on_run_abort) and records already written stay.
    raise KeyboardInterrupt(f"signal {signum}")


_QUIETED = ("chared_flows.tracking.base", "chared_flows.tracking.promptlayer", "urllib3", "mlflow.tracing",
            "mlflow.utils.requests_utils")


def _quiet_libraries() -> dict[str, int]:
    """The CLI prints one line per failed tracker itself; the libraries' own retry chatter is noise.

    Returns the previous levels, which main() puts back (tests call main() in-process).
    """
    before = {name: logging.getLogger(name).level for name in _QUIETED}
    for name in _QUIETED:
        logging.getLogger(name).setLevel(logging.ERROR)
    return before


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        refuse_busy_run(argv)
    except CharedError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return EXIT_USER_ERROR
    parser = build_parser()
    args = parser.parse_args(join_dash_values(argv, parser))
    setup_logging()
    levels = _quiet_libraries()
    previous = signal.signal(signal.SIGTERM, _interrupt) if _in_main_thread() else None
    try:
        return args.handler(args)
    except CharedError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)  # one line, always
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())

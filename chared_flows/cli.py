"""`chared`: the command line. The composition root: nothing imports this module.

Each subcommand is a pair of functions, `add_<name>(subparsers)` and `cmd_<name>(args)`,
registered in COMMANDS; adding `ab` or `sync` later means adding one more pair.
Library errors (CharedError) become one line on stderr and exit code 2; tracebacks are
kept for real bugs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from chared_flows.errors import CharedError, ConfigError

EXIT_USER_ERROR = 2


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


def unescape(text: str) -> str:
    r"""Let `--stop '\n'` mean a newline, as users type it in a shell."""
    try:
        return text.encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")
    except (UnicodeError, ValueError):
        return text


# --- generate ---------------------------------------------------------------------


def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="decode PROMPT with one model or a CharED ensemble, streaming")
    p.add_argument("prompt", help="the prompt text ('-' reads it from stdin)")
    p.add_argument("--models", default="smollm2,gemma3-270m", help="comma-separated member specs")
    p.add_argument("--weights", help="comma-separated weights, one per model (default: uniform)")
    p.add_argument("--mode", default="chared")
    p.add_argument("--rule", default="mixture")
    p.add_argument("--max-new-chars", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", default=None, help=r"stop string (repeatable; '\n' is a newline)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in each member's chat template")
    p.set_defaults(handler=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from chared_flows.decoding import Ensemble, Member

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    specs = parse_list(args.models, "models") or []
    weights = parse_weights(args.weights)
    if weights is not None and len(weights) != len(specs):
        raise ConfigError(f"--weights has {len(weights)} values for {len(specs)} models ({', '.join(specs)})")
    members = [Member.load(spec, chat=args.chat) for spec in specs]
    ensemble = Ensemble(members, weights=weights, mode=args.mode, rule=args.rule)
    stops = [unescape(s) for s in args.stop] if args.stop else None
    streaming = ensemble.start_stream(
        prompt, max_new_chars=args.max_new_chars, temperature=args.temperature,
        top_p=args.top_p, seed=args.seed, stop=stops,
    )
    # subtle: the last chunk is written from the final result, which excludes a matched
    # stop string (the engine's final stream chunk has been seen to include it).
    written, pending = 0, ""
    for chunk in streaming:
        if pending:
            sys.stdout.write(pending)
            sys.stdout.flush()
            written += len(pending)
        pending = chunk
    sys.stdout.write(streaming.result.text[written:] + "\n")
    return 0


# --- run --------------------------------------------------------------------------


def add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a workflow over its dataset, all variants")
    p.add_argument("workflow", help="workflow name (in the workflows dir) or path to a .yaml file")
    p.add_argument("--limit", type=int, help="only the first N samples")
    p.add_argument("--run-id", help="reuse an id to resume an interrupted run")
    p.add_argument("--out", default="runs", help="directory for run results (default: ./runs)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from chared_flows.flow.runner import WorkflowRunner, summarize

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit} must be at least 1")
    resolved = workflow_store(args).resolve(args.workflow)
    runner = WorkflowRunner(
        resolved, out_dir=args.out, run_id=args.run_id, limit=args.limit,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    print(f"run {runner.run_id}: {len(resolved.variants)} variants -> {runner.results.path}", file=sys.stderr)
    new = 0
    for record in runner.run():
        new += 1
        if record.error:
            print(f"  {record.variant} {record.sample_id}: {record.error}", file=sys.stderr)
    print(f"{new} new records", file=sys.stderr)
    print(json.dumps(summarize(runner.results.read()), indent=2))
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


def cmd_templates(args: argparse.Namespace) -> int:
    store = template_store(args)
    if args.action == "list":
        for name in store.names():
            latest = store.resolve(f"{name}@latest")
            versions = ", ".join(f"v{v}" for v in store.versions(name))
            print(f"{name}  ({versions})  {latest.description.strip()[:70]}")
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
    validate = actions.add_parser("validate", help="check a workflow and everything it refers to")
    validate.add_argument("name", help="workflow name or path to a .yaml file")
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
            print(f"{name}  v{spec.version}  {spec.template}  {len(spec.expanded_variants())} variants")
    elif args.action == "validate":
        resolved = store.resolve(args.name)
        spec = resolved.spec
        print(f"ok: {spec.name} v{spec.version} ({resolved.path})")
        print(f"  template {resolved.template.ref} {resolved.template.content_hash}")
        print(f"  dataset  {json.dumps(spec.dataset, default=str)}")
        print(f"  parser   {spec.parser}; scorers: {', '.join(s.name for s in spec.scorer_refs()) or 'none'}")
        for v in resolved.variants:
            weights = "" if v.weights is None else " weights " + "/".join(f"{w:g}" for w in v.weights)
            print(f"  variant  {v.name}: {'+'.join(v.members)}{weights}")
    return 0


# --- main -------------------------------------------------------------------------

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_generate, add_run, add_templates, add_workflows]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chared", description="Character-wise ensemble decoding (CharED).")
    parser.add_argument("--templates-dir", help="default: $CHARED_TEMPLATES_DIR or ./templates")
    parser.add_argument("--workflows-dir", help="default: $CHARED_WORKFLOWS_DIR or ./workflows")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CharedError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)  # one line, always
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

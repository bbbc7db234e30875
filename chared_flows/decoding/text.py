"""What text the engine accepts, decided in one place: a str that encodes to UTF-8.

Prompts, chat message contents, continuations to score and stop strings all go
through here (members.render, Ensemble.score, DecodeConfig's stop validator,
the CLI's argv). Traps this closes:

- Python strs may hold lone surrogates ("ab\\ud800cd", or "\\udcff" that
  Python makes of an invalid argv byte): tokenizers raise a TypeError on them
  and a stop string holding one can never match the UTF-8 the engine writes.
- Bytes from outside (argv, stdin) are decoded as strict UTF-8 with one
  message naming the byte and its offset.
- Backslash escapes are never interpreted here; `unescape` is the CLI's
  opt-in (`chared generate -e`), with a fixed, documented set of escapes.
"""

from __future__ import annotations

import re
from typing import Any

from chared_flows.errors import ConfigError


def text_problem(value: Any, what: str) -> str | None:
    """Why `value` is not acceptable text (one line naming `what` and the fix), or None if it is."""
    if not isinstance(value, str):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return f"{what} is a {type(value).__name__} ({shown}); pass a str"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"{what} holds a lone surrogate {value[exc.start]!r} at character {exc.start}, which is not text "
            "(it has no UTF-8 form); decode the source bytes as UTF-8, e.g. with errors='replace'"
        )
    return None


def check_text(value: Any, what: str) -> str:
    """`value` if it is a str with a UTF-8 form; ConfigError otherwise."""
    problem = text_problem(value, what)
    if problem:
        raise ConfigError(problem)
    return value


def check_prompt(prompt: Any) -> Any:
    """A prompt's text checked: a str, or each message's content (the message shape is checked by members)."""
    if not isinstance(prompt, (str, list, tuple)):
        raise ConfigError(text_problem(prompt, "prompt") + " or a list of chat messages")
    if isinstance(prompt, str):
        return check_text(prompt, "prompt")
    for i, message in enumerate(prompt):
        if isinstance(message, dict) and "content" in message:
            check_text(message["content"], f"message {i}'s content")
    return prompt


def decode_utf8(data: bytes, where: str) -> str:
    """Bytes from outside as text; invalid UTF-8 is one line naming the byte and its offset."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{where} is not valid UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start}); "
            "save the text as UTF-8, e.g. iconv -t UTF-8"
        ) from None


def argv_text(arg: str, where: str) -> str:
    """A command-line argument as text.

    subtle: Python decodes argv with surrogateescape, so an invalid byte 0xff arrives as
    the lone surrogate '\\udcff'; encoding it back gives the bytes the shell passed.
    """
    try:
        data = arg.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no argv byte makes (a caller's own str)
        return check_text(arg, where)
    return decode_utf8(data, where)


_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)", re.DOTALL)
_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b",
           "f": "\f", "v": "\v", "e": "\x1b"}
ESCAPES = r"\n \t \r \0 \\ \' \" \a \b \f \v \e \xHH \uHHHH \UHHHHHHHH"


def unescape(text: str, where: str) -> str:
    """Backslash escapes (ESCAPES) turned into the characters they name; any other backslash stays.

    \\xHH is the character U+00HH (text, not a raw byte). The result is checked text.
    """
    def one(match: re.Match) -> str:
        code = match.group(1)
        if code[0] in "xuU" and len(code) > 1:
            value = int(code[1:], 16)
            if value > 0x10FFFF:
                raise ConfigError(f"{where}: escape \\{code} is beyond U+10FFFF; no character has it")
            return chr(value)
        return _SIMPLE.get(code, match.group(0))

    return check_text(_ESCAPE.sub(one, text), where)

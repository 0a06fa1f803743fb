"""How an error reaches the user: one line, never a traceback."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

# How much of a user's value an error echoes: enough to recognise it, never a screenful.
ECHO_LIMIT = 120
# The most a whole one-line message may be (a guard over every error the CLI prints).
MESSAGE_LIMIT = 1000

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


class ReflexError(ValueError):
    """Bad input to the Python API (an unknown model, an empty prompt, max_cycles < 1, a
    model that cannot be loaded), said in one line: the CLI prints it as click's "Error: ..."."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def one_line(value, limit: int = ECHO_LIMIT) -> str:
    """`value` as text that prints as one line: control, format and separator
    characters (newlines, U+2028, NUL, a lone surrogate) escaped, cut to `limit`
    characters with "..." (only the start of a huge value is looked at)."""
    text = value if isinstance(value, str) else str(value)
    head = text[: limit + 1]
    out = []
    for ch in head:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif unicodedata.category(ch)[0] in "CZ" and ch != " ":
            code = ord(ch)
            width = 2 if code < 0x100 else 4 if code < 0x10000 else 8
            out.append(f"\\{'x' if width == 2 else 'u' if width == 4 else 'U'}{code:0{width}x}")
        else:
            out.append(ch)
    escaped = "".join(out)
    if len(text) > limit or len(escaped) > limit:
        return escaped[: max(0, limit - 3)] + "..."
    return escaped


def short_repr(value, limit: int = 80) -> str:
    """A repr for a message, cut to `limit` characters without rendering more of
    the value than that (a hostile config can hold gigabytes)."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict = 2, 4, 4, 4
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def user_path(name, what: str = "path") -> Path:
    """A name the user gave (an option, an environment variable) as a path, with
    ~ expanded; ValueError in one line when it cannot name a file here: empty,
    holding NUL, an unknown ~user, or refused by the system (too long, a loop).
    Whether the path exists is left to the caller."""
    text = os.fspath(name) if isinstance(name, os.PathLike) else name
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"the {what} is empty")
    shown = one_line(text)
    if "\0" in text:
        raise ValueError(f"the {what} '{shown}' holds a NUL character")
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # ~someone with no such user (or no home directory)
        user = one_line(text.split("/")[0], 40)
        raise ValueError(f"the {what} '{shown}': no home folder for {user}") from None
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as err:  # too long, a symlink loop, no permission: the system's reason
        raise ValueError(f"the {what} '{shown}': {err.strerror or type(err).__name__}") from None
    return path

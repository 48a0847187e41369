"""User-facing errors: a bad request or an unusable environment, explained in one sentence.

The CLI prints these without a traceback and exits non-zero; the app shows them as ``gr.Error``. Anything else
that escapes is a bug. A message quotes the caller's value through :func:`shown`, so it stays one short sentence
whatever was sent.
"""

from typing import Any

#: Longest quotation of a caller's value in a message, in characters.
SHOWN_CHARS = 60


class LightcacheError(ValueError):
    """A request the project cannot serve, with a message that says what to change."""


class RunCancelled(RuntimeError):
    """The run was stopped on request (the app's Stop button, Ctrl-C); nothing is left behind."""


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters (ending in an ellipsis when cut).

    >>> shown("abc"), shown(12)
    ("'abc'", '12')
    >>> shown("x" * 100_000, limit=8)
    "'xxxxxx…"
    >>> len(shown(list(range(10_000))))
    60
    """
    try:
        text = repr(value)
    except ValueError:  # an int too long for Python to print
        return f"a {type(value).__name__} too long to show"
    return text if len(text) <= limit else text[:limit - 1] + "…"

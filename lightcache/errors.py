"""User-facing errors: a bad request or an unusable environment, explained in one sentence.

The CLI prints these without a traceback and exits non-zero; the app shows them as ``gr.Error``. Anything else
that escapes is a bug.
"""


class LightcacheError(ValueError):
    """A request the project cannot serve, with a message that says what to change."""


class RunCancelled(RuntimeError):
    """The run was stopped on request (the app's Stop button, Ctrl-C); nothing is left behind."""

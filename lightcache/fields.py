"""A family's own request fields, declared once: the CLI flags, the app's controls, the settings' validation and
the presets all read the declaration.

Every family runs the same core request (prompt, size, frames, steps, guidance, EasyCache's threshold...), which
:class:`lightcache.settings.RunSettings` holds. What only some models take (Wan's flow shift, the second guidance
of Wan2.2's two experts, SVD's motion bucket) is a :class:`RequestField` of the family's adapter; a request keeps
those values in ``RunSettings.extra``. This module imports nothing heavy, so the CLI can build its flags from every
family's fields before torch loads.

Example:
    >>> shift = RequestField("flow_shift", "Flow shift", "the scheduler's flow shift", low=0.0, high=100.0)
    >>> shift.cli_flag, shift.check(5.0)
    ('--flow-shift', 5.0)
    >>> shift.check(-1)
    Traceback (most recent call last):
    ...
    lightcache.errors.LightcacheError: flow_shift must be between 0.0 and 100.0, got -1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import LightcacheError

_KINDS = ("float", "int")


@dataclass(frozen=True)
class RequestField:
    """One setting a family takes beyond the core request.

    Attributes:
        name: the key in ``RunSettings.extra``, in a preset's ``defaults`` and in the app's API (``flow_shift``).
        label: the app control's label.
        help: one sentence for the CLI's ``--help`` and the app control's info line.
        low, high: the range a value must be in (inclusive).
        kind: ``"float"`` or ``"int"``.
        optional: None is a valid value (the model's own default, e.g. a checkpoint's expert boundary); a field that
            is not optional must be in every preset of the family.
    """

    name: str
    label: str
    help: str
    low: float
    high: float
    kind: str = "float"
    optional: bool = False

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"RequestField {self.name}: kind must be one of {', '.join(_KINDS)}, got {self.kind!r}.")
        if not self.low <= self.high:
            raise ValueError(f"RequestField {self.name}: low must not exceed high.")

    @property
    def cli_flag(self) -> str:
        """The command-line flag: the name with dashes (``--flow-shift``)."""
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """``value`` if it is valid for this field (whole numbers for ``int``), else :class:`LightcacheError` naming
        the field and its range."""
        if value is None:
            if self.optional:
                return None
            raise LightcacheError(f"{self.name} is required for this model; give a value between {self.low} and "
                                  f"{self.high}.")
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise LightcacheError(f"{self.name} must be a whole number between {int(self.low)} and "
                                      f"{int(self.high)}, got {_shown(value)}.")
            if not self.low <= value <= self.high:
                raise LightcacheError(f"{self.name} must be between {int(self.low)} and {int(self.high)}, "
                                      f"got {value}.")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise LightcacheError(f"{self.name} must be a number between {self.low} and {self.high}, "
                                  f"got {_shown(value)}.")
        if not self.low <= value <= self.high:
            raise LightcacheError(f"{self.name} must be between {self.low} and {self.high}, got {value}.")
        return value


def _shown(value: Any) -> str:
    """A refused value as the message quotes it: its repr, cut short (a caller may send anything, at any length)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."

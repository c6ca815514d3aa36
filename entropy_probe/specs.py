"""Parsing of `NAME` and `NAME:key=value,...` specifications used on the command line."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from .errors import SpecError


#: Seeds lie in [0, 2**63): NumPy's SeedSequence rejects negative seeds, torch.manual_seed takes at
#: most 2**64 - 1, and a result file stores the seed as a 64-bit signed integer attribute.
SEED_LIMIT = 2**63
SEED_RANGE = "an integer from 0 to 2**63 - 1"


def seed_in_range(value: int) -> bool:
    """Return whether `value` is a valid seed, an integer in [0, 2**63)."""
    return 0 <= value < SEED_LIMIT


def parse_seed(text: str) -> int:
    """Parse a seed parameter of a specification; raise ValueError outside [0, 2**63)."""
    value = int(text)
    if not seed_in_range(value):
        raise ValueError(f"seed {value} out of range")
    return value


#: Description of the expected value in error messages, by parameter type.
_EXPECTED = {int: "an integer", float: "a number", str: "text", parse_seed: f"a seed, {SEED_RANGE}"}


@dataclasses.dataclass(frozen=True)
class Param:
    """A typed parameter of a named specification, with its default and help text."""

    name: str
    type: Callable[[str], Any]
    default: Any
    help: str = ""


def split_spec(spec: str, kind: str) -> tuple[str, dict[str, str]]:
    """Split `NAME:key=value,...` into the name and a dict of raw string values."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"empty {kind} specification; write NAME or NAME:key=value,...")
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    values: dict[str, str] = {}
    if rest.strip():
        for item in rest.split(","):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or not key:
                raise SpecError(
                    f"invalid {kind} specification {spec!r}: {item!r} is not key=value; "
                    f"write for example 'vp:beta_min=0.1,beta_max=16'"
                )
            if key in values:
                raise SpecError(f"invalid {kind} specification {spec!r}: {key!r} is given twice")
            values[key] = value.strip()
    return name, values


def convert_params(
    spec: str, kind: str, params: Mapping[str, Param], raw: Mapping[str, str]
) -> dict[str, Any]:
    """Convert raw string values to typed parameters, filling in defaults."""
    unknown = sorted(set(raw) - set(params))
    if unknown:
        allowed = ", ".join(params) or "none"
        raise SpecError(
            f"unknown parameter {unknown[0]!r} in {kind} specification {spec!r}; "
            f"allowed parameters: {allowed}"
        )
    values: dict[str, Any] = {}
    for name, param in params.items():
        if name not in raw:
            values[name] = param.default
            continue
        try:
            values[name] = param.type(raw[name])
        except (TypeError, ValueError):
            expected = _EXPECTED.get(param.type, f"a value of type {getattr(param.type, '__name__', '?')}")
            example = "" if param.default in (None, "") else f", for example {name}={_format_value(param.default)}"
            raise SpecError(
                f"invalid value {raw[name]!r} for {name} in {kind} specification {spec!r}: expected {expected}{example}"
            ) from None
    return values


def format_spec(name: str, values: Mapping[str, Any]) -> str:
    """Write a name and parameters back as a canonical `NAME:key=value,...` string."""
    if not values:
        return name
    # Empty strings are unset optional parameters (such as a file path); leave them out.
    parts = [f"{key}={_format_value(value)}" for key, value in values.items() if value != ""]
    if not parts:
        return name
    return name + ":" + ",".join(parts)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)

"""Text for estimates with standard errors, shared by the summaries of every command."""

from __future__ import annotations

import math
from typing import Optional, Sequence

#: Significant digits of a printed standard error.
STDERR_DIGITS = 2
#: Significant digits of a value printed without a standard error.
VALUE_DIGITS = 4
#: Beyond these magnitudes an estimate is printed with a shared power of ten.
LARGE = 1e6
SMALL = 1e-4


def format_estimate(value: float, stderr: Optional[float] = None) -> str:
    """Format `value ± stderr` with the value rounded to the last digit that the error supports.

    The standard error keeps two significant digits and the value is rounded at the same decimal
    place, so 143.4172 ± 0.83 prints as "143.42 ± 0.83" and 2644.3668 ± 210 as "2640 ± 210".
    Without a usable error (None, zero, negative or not finite) the value keeps four significant
    digits. Very large or very small numbers share one power of ten: "(1.23 ± 0.04)e+07".
    """
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if stderr is None or not math.isfinite(float(stderr)) or float(stderr) <= 0:
        text = f"{value:.{VALUE_DIGITS}g}"
        return text if stderr is None else f"{text} ± {stderr:g}"
    stderr = float(stderr)
    magnitude = max(abs(value), stderr)
    if magnitude >= LARGE or magnitude < SMALL:
        exponent = math.floor(math.log10(magnitude))
        scale = 10.0**exponent
        return f"({format_estimate(value / scale, stderr / scale)})e{exponent:+03d}"
    # Decimal place of the last significant digit of the error (0 is the units, -1 the tenths).
    last = math.floor(math.log10(stderr)) - (STDERR_DIGITS - 1)
    rounded_error = round(stderr, -last)
    if rounded_error >= 10.0 ** (last + STDERR_DIGITS):
        last += 1  # the rounding carried into a new digit, as 0.0996 to 0.10
        rounded_error = round(stderr, -last)
    if last >= 0:
        return f"{round(value, -last):.0f} ± {rounded_error:.0f}"
    return f"{value:.{-last}f} ± {rounded_error:.{-last}f}"


def format_rows(rows: Sequence[Sequence[str]]) -> list[str]:
    """Align rows of text cells into columns, each as wide as its widest cell."""
    columns = max((len(row) for row in rows), default=0)
    widths = [max((len(row[i]) for row in rows if len(row) > i), default=0) for i in range(columns)]
    lines = []
    for row in rows:
        cells = [text.ljust(widths[i]) for i, text in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return lines


def format_step(step: float) -> str:
    """Write a quantisation bin width as a fraction k/n when it is one (1/255, 2/255), else in 4 digits."""
    for numerator in (1, 2):
        denominator = numerator / step
        if abs(denominator - round(denominator)) < 1e-6 * denominator:
            return f"{numerator}/{round(denominator)}"
    return f"{step:.4g}"

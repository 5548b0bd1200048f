"""Kubernetes quantities (`100m`, `64Mi`, `1e3`), bounded, with errors that name the offending field.

The one quantity parser of every component. It follows the grammar of apimachinery's
`pkg/api/resource/quantity.go`:

    <quantity>  ::= <sign>? <number> <suffix>
    <number>    ::= <digits> | <digits>. | <digits>.<digits> | .<digits>
    <suffix>    ::= Ki | Mi | Gi | Ti | Pi | Ei | n | u | m | "" | k | M | G | T | P | E | (e|E) <sign>? <digits>

and, like the API server, rounds a value finer than a nano-unit away from zero.

It is stricter than the API server in one way, on purpose: a value whose magnitude exceeds what
an int64 count of milli-units can hold (about 9.2e15: 9.2 peta-cores, 8 PiB) is rejected, as is
a text longer than 64 characters. The API server accepts `cpu: "1e999990"` and passes it on
unchanged; turning that into an integer takes tens of seconds of CPU, which let any tenant stall
the webhook and the scheduler extender. The bound is checked on the text, before any Decimal or
int conversion, so rejecting such a value costs microseconds. JSON numbers are accepted too
(policy YAML writes `cpu: 1`); NaN and infinities are not quantities.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_CEILING, ROUND_UP, Context, Decimal
from typing import Any

MAX_TEXT = 64
# The largest magnitude whose milli-value fits an int64 (the scheduler's MilliValue of a cpu).
MAX_MAGNITUDE = Decimal((2 ** 63 - 1) // 1000)
_MAX_DIGITS = len(str(MAX_MAGNITUDE))  # 16: more integer digits than this is always too large
_NANO = Decimal("1e-9")
# Enough digits for any accepted text (64 characters) times 2^60: no intermediate rounding.
_EXACT = Context(prec=100)

_GRAMMAR = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?")
_DECIMAL_SI = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY_SI = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}


class QuantityError(ValueError):
    """A field holds something that is not a (sane) Kubernetes quantity; the message names the field."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _show(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_TEXT else f"{text[:MAX_TEXT]}... ({len(text)} characters)"


def parse_field(value: Any, path: str) -> Decimal:
    """The quantity at object field `path` (e.g. `spec.overhead.cpu`), exact to the nano-unit.

    Raises QuantityError naming `path` when `value` is not a quantity or is out of range.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise QuantityError(path, f'invalid quantity "{_show(value)}": must be a string such as 100m or 64Mi')
    if isinstance(value, int):
        if abs(value) > MAX_MAGNITUDE:
            raise QuantityError(path, f'quantity "{_show(value)}" is out of range (magnitude above {MAX_MAGNITUDE})')
        return Decimal(value)
    if isinstance(value, (float, Decimal)):
        if not math.isfinite(value):
            raise QuantityError(path, f'invalid quantity "{value}": not a finite number')
        value = repr(float(value))
    return _parse_text(value, path)


def _parse_text(text: str, path: str) -> Decimal:
    if len(text) > MAX_TEXT:
        raise QuantityError(path, f'invalid quantity "{_show(text)}": longer than {MAX_TEXT} characters')
    match = _GRAMMAR.fullmatch(text)
    if match is None or not (match.group(2) or match.group(3)):
        raise QuantityError(path, f'invalid quantity "{text}"')
    sign, whole, fraction, suffix = match.group(1), match.group(2), match.group(3) or "", match.group(4) or ""
    whole = whole.lstrip("0")
    if not whole and not fraction.strip("0"):
        return Decimal(0)
    if suffix in _BINARY_SI:
        # 2^(10k) has at most 3k+1 decimal digits: a safe over-estimate of the magnitude
        scale10, factor = (_BINARY_SI[suffix] * 3) // 10 + 1, Decimal(2 ** _BINARY_SI[suffix])
    elif suffix in _DECIMAL_SI:
        scale10, factor = _DECIMAL_SI[suffix], None
    else:
        exponent = suffix[1:].lstrip("+-").lstrip("0")
        if len(exponent) > 9:  # the API server's own limit is an int32 exponent
            raise QuantityError(path, f'invalid quantity "{text}": exponent out of range')
        scale10, factor = int(suffix[1:]), None
    if len(whole) + scale10 > _MAX_DIGITS:
        raise QuantityError(path, f'quantity "{text}" is out of range (magnitude above {MAX_MAGNITUDE})')
    if len(whole) + scale10 < -9:
        # below a nano-unit (`1e-999990`): the API server rounds it up to one nano-unit
        return Decimal(f"{sign}1e-9")
    number = Decimal(f"{sign}{whole or '0'}.{fraction or '0'}")
    number = _EXACT.multiply(number, factor) if factor is not None else _EXACT.scaleb(number, scale10)
    if abs(number) > MAX_MAGNITUDE:
        raise QuantityError(path, f'quantity "{text}" is out of range (magnitude above {MAX_MAGNITUDE})')
    if number.as_tuple().exponent < -9:
        number = number.quantize(_NANO, rounding=ROUND_UP, context=_EXACT)
    return number


def millis(value: Any, path: str) -> int:
    """The quantity at `path` in milli-units, rounded up (as the scheduler counts cpu)."""
    return int((parse_field(value, path) * 1000).to_integral_value(rounding=ROUND_CEILING))


def units(value: Any, path: str) -> int:
    """The quantity at `path` in whole units, rounded up (as the scheduler counts memory bytes)."""
    return int(parse_field(value, path).to_integral_value(rounding=ROUND_CEILING))


def check_pod_resources(spec: Any) -> None:
    """Parse every quantity a pod spec holds (containers' and init containers' requests and limits,
    spec.overhead); QuantityError naming the first invalid one.

    A pod whose quantities the scheduler side cannot read is not sandbox-eligible: the webhook
    refuses it at admission, naming the field, instead of letting it reach the extender.
    """
    if not isinstance(spec, dict):
        return
    for kind in ("containers", "initContainers"):
        containers = spec.get(kind)
        for index, container in enumerate(containers if isinstance(containers, list) else []):
            resources = container.get("resources") if isinstance(container, dict) else None
            for part in ("requests", "limits"):
                values = resources.get(part) if isinstance(resources, dict) else None
                for name, value in (values.items() if isinstance(values, dict) else ()):
                    parse_field(value, f"spec.{kind}[{index}].resources.{part}.{name}")
    overhead = spec.get("overhead")
    for name, value in (overhead.items() if isinstance(overhead, dict) else ()):
        parse_field(value, f"spec.overhead.{name}")

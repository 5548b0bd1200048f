"""Kubernetes quantities read from objects, with errors that name the offending field."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity


class QuantityError(ValueError):
    """An object field holds something that is not a Kubernetes quantity; the message names the field."""


def parse_field(value: Any, path: str) -> Decimal:
    """Parse the quantity at object field `path` (e.g. `spec.overhead.cpu`); QuantityError naming it if invalid."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise QuantityError(f'{path}: invalid quantity "{value}"')
    try:
        return parse_quantity(value)
    except ValueError:
        raise QuantityError(f'{path}: invalid quantity "{value}"') from None

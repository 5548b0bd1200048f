"""Reading the `sandgate.io/overhead-padding` record (keys.PADDING_ANNOTATION) outside the webhook.

The webhook writes the record (webhooks/padding.py: compact JSON such as
`{"memory":"64Mi","basis":{"memory":"512Mi"},"containers":["app"]}`): what it added to the pod's
requests for the sandbox overhead, per resource, and the effective pod request it computed that
from (`basis`, before padding). The kubelet passes pod annotations into the CRI sandbox config, so
the node agent can read it over CRI without reading Pods from the API server.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from sandgate.core.jsonshape import ShapeError
from sandgate.core.podrequests import resource_list
from sandgate.core.quantity import QuantityError


def padded_resource(value: Any, resource: str) -> tuple[Decimal, Decimal] | None:
    """(amount padded, basis) of `resource` in a record; None when the record does not pad it or is not one."""
    try:
        doc = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        return None
    if not isinstance(doc, dict) or resource not in doc or not isinstance(doc.get("basis"), dict):
        return None
    try:
        amount = resource_list({resource: doc[resource]}, "record")[resource]
        basis = resource_list(doc["basis"], "record.basis").get(resource)
    except (ShapeError, QuantityError):
        return None
    # The parser bounds every quantity (1e999990 is refused, never expanded); a negative one is not padding.
    if basis is None or amount < 0 or basis < 0:
        return None
    return amount, basis

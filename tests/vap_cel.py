"""Evaluate a ValidatingAdmissionPolicy the way kube-apiserver does, on cel-python (celpy).

The API server's order (k8s.io/apiserver pkg/admission/plugin/policy/validating): matchConstraints
(resource rules), then matchConditions (all true, else the policy does not apply), then every
validation; `variables` are evaluated lazily, on first use, and an expression that errors counts as
a failed validation under failurePolicy Fail. cel-python parses with the CEL grammar but does no
type checking; tests/manifests checks the Go validation rules statically beside this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import celpy
from celpy import celtypes

_ENV = celpy.Environment()


def compile_expression(expression: str) -> Callable[[dict], Any]:
    """The compiled program of one CEL expression; raises celpy.CELParseError on a syntax error."""
    program = _ENV.program(_ENV.compile(expression))
    return program.evaluate


class _LazyVariables(celtypes.MapType):
    """`variables`: each entry is computed on first access, as the API server does."""

    def __init__(self, programs: dict[str, Callable[[dict], Any]], activation: dict):
        super().__init__()
        self._programs = programs
        self._activation = activation

    def __contains__(self, key: object) -> bool:
        return str(key) in self._programs

    def __getitem__(self, key: Any) -> Any:
        name = str(key)
        if not super().__contains__(name):
            value = self._programs[name]({**self._activation, "variables": self})
            if isinstance(value, celpy.CELEvalError):
                raise value
            super().__setitem__(name, value)
        return super().__getitem__(name)


@dataclass
class Result:
    """What the API server would do: not applicable, allowed, or denied with messages."""

    applies: bool
    allowed: bool
    messages: list[str]


def _rule_matches(rule: dict, request: dict) -> bool:
    resource = request["resource"]
    name = resource["resource"] + (f"/{request['subResource']}" if request.get("subResource") else "")
    return (request["operation"] in rule["operations"] or "*" in rule["operations"]) and \
        (resource["group"] in rule["apiGroups"] or "*" in rule["apiGroups"]) and \
        (name in rule["resources"] or "*" in rule["resources"])


def evaluate(policy: dict, request: dict) -> Result:
    """Run `policy` (a decoded ValidatingAdmissionPolicy) on `request` (an AdmissionRequest dict)."""
    spec = policy["spec"]
    if not any(_rule_matches(r, request) for r in spec["matchConstraints"]["resourceRules"]):
        return Result(False, True, [])
    base = {
        "request": celpy.json_to_cel(request),
        "object": celpy.json_to_cel(request.get("object")),
        "oldObject": celpy.json_to_cel(request.get("oldObject")),
    }
    programs = {v["name"]: compile_expression(v["expression"]) for v in spec.get("variables", [])}
    variables = _LazyVariables(programs, base)
    activation = {**base, "variables": variables}

    def run(expression: str) -> Any:
        try:
            value = compile_expression(expression)(activation)
        except celpy.CELEvalError as exc:
            return exc
        return value

    for condition in spec.get("matchConditions", []):
        value = run(condition["expression"])
        if isinstance(value, celpy.CELEvalError):
            return Result(True, spec.get("failurePolicy") != "Fail", [f"matchCondition error: {value}"])
        if value is not True and value != celtypes.BoolType(True):
            return Result(False, True, [])
    messages = []
    for validation in spec["validations"]:
        value = run(validation["expression"])
        if isinstance(value, celpy.CELEvalError):
            messages.append(f"expression error: {value}")
        elif not bool(value):
            message = validation.get("message", "")
            if "messageExpression" in validation:
                text = run(validation["messageExpression"])
                message = str(text) if not isinstance(text, celpy.CELEvalError) else message
            messages.append(message)
    return Result(True, not messages, messages)

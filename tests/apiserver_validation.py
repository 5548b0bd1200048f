"""The kube-apiserver's semantic validation of webhook configurations, ported from the Go sources.

The OpenAPI schemas (tests/k8s_schemas.py, kubernetes-validate) only check shapes; the API server
then runs `pkg/apis/admissionregistration/validation/validation.go` on the defaulted object and
refuses, for example, a service path segment that is not a DNS-1123 subdomain. This module
reproduces those rules for Mutating/ValidatingWebhookConfiguration (admissionregistration.k8s.io
v1beta1 and v1), with the helpers they call:

- k8s.io/apiserver/pkg/util/webhook/validation.go: ValidateWebhookService (name, namespace, port,
  every path segment a DNS-1123 subdomain);
- k8s.io/apimachinery/pkg/util/validation: IsFullyQualifiedName (webhook names: a DNS-1123
  subdomain of at least three segments), IsDNS1035Label (admissionReviewVersions), label keys
  and values;
- metav1 validation: ValidateLabelSelector (operators, values present/absent, keys, values);
- genericvalidation.ValidateObjectMeta (metadata.name a DNS-1123 subdomain, labels, annotations).

The object is defaulted first, as the API server does before validating (the v1beta1 and v1
defaults differ). Where versions differ, the strictest rule is applied, except for what depends
on the server's version: the AdmissionReview versions it accepts (1.14-1.16: v1beta1 only; 1.17+:
v1 and v1beta1, per AcceptedAdmissionReviewVersions). Errors are returned as "field: message"
strings in the API server's wording.
"""

from __future__ import annotations

import copy
import re

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
QUALIFIED_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

FAILURE_POLICIES = {"Ignore", "Fail"}
MATCH_POLICIES = {"Exact", "Equivalent"}
NO_SIDE_EFFECT_CLASSES = {"None", "NoneOnDryRun"}
OPERATIONS = {"*", "CREATE", "UPDATE", "DELETE", "CONNECT"}
REINVOCATION_POLICIES = {"Never", "IfNeeded"}
SCOPES = {"Cluster", "Namespaced", "*"}
SELECTOR_OPERATORS = {"In", "NotIn", "Exists", "DoesNotExist"}
MAX_MATCH_CONDITIONS = 64
TOTAL_ANNOTATION_SIZE = 256 * 1024


def _minor(version: str) -> int:
    major, minor = (int(x) for x in version.split(".")[:2])
    assert major == 1, version
    return minor


def accepted_review_versions(version: str) -> list[str]:
    """AcceptedAdmissionReviewVersions of the API server `version` ("1.14"), in the Go order."""
    return ["v1beta1"] if _minor(version) <= 16 else ["v1", "v1beta1"]


def _bounded_match(value: str, limit: int, pattern: re.Pattern, message: str) -> list[str]:
    """The shape of the utilvalidation.IsDNS* checks: a length limit, then a pattern."""
    errs = []
    if len(value) > limit:
        errs.append(f"must be no more than {limit} characters")
    if not pattern.match(value):
        errs.append(message)
    return errs


def is_dns1123_subdomain(value: str) -> list[str]:
    """utilvalidation.IsDNS1123Subdomain."""
    return _bounded_match(value, 253, DNS1123_SUBDOMAIN,
                          "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
                          "or '.', and must start and end with an alphanumeric character")


def is_dns1035_label(value: str) -> list[str]:
    """utilvalidation.IsDNS1035Label."""
    return _bounded_match(value, 63, DNS1035_LABEL,
                          "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with "
                          "an alphabetic character, and end with an alphanumeric character")


def is_qualified_name(value: str) -> list[str]:
    """utilvalidation.IsQualifiedName (label keys, annotation keys, matchCondition names)."""
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            return ["prefix part must be non-empty"]
        errs = [f"prefix part {e}" for e in is_dns1123_subdomain(prefix)]
        if errs:
            return errs
    else:
        return ["a qualified name must consist of alphanumeric characters, '-', '_' or '.', with an optional "
                "DNS subdomain prefix and '/'"]
    if not name:
        return ["name part must be non-empty"]
    if len(name) > 63:
        return ["name part must be no more than 63 characters"]
    if not QUALIFIED_NAME_PART.match(name):
        return ["name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                "with an alphanumeric character"]
    return []


def is_label_value(value: str) -> list[str]:
    """utilvalidation.IsValidLabelValue."""
    errs = []
    if len(value) > 63:
        errs.append("must be no more than 63 characters")
    if not LABEL_VALUE.match(value):
        errs.append("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'")
    return errs


def validate_object_meta(meta: dict, path: str = "metadata") -> list[str]:
    """genericvalidation.ValidateObjectMeta for a cluster-scoped object named as a DNS-1123 subdomain."""
    errs = []
    name = meta.get("name") or ""
    if not name and not meta.get("generateName"):
        errs.append(f"{path}.name: Required value: name or generateName is required")
    errs += [f"{path}.name: Invalid value: {name!r}: {e}" for e in is_dns1123_subdomain(name)] if name else []
    if meta.get("namespace"):
        errs.append(f"{path}.namespace: Forbidden: not allowed on this type")
    for key, value in (meta.get("labels") or {}).items():
        errs += [f"{path}.labels: Invalid value: {key!r}: {e}" for e in is_qualified_name(key)]
        errs += [f"{path}.labels: Invalid value: {value!r}: {e}" for e in is_label_value(str(value))]
    total = 0
    for key, value in (meta.get("annotations") or {}).items():
        errs += [f"{path}.annotations: Invalid value: {key!r}: {e}" for e in is_qualified_name(key.lower())]
        total += len(key) + len(value)
    if total > TOTAL_ANNOTATION_SIZE:
        errs.append(f"{path}.annotations: Too long: must have at most {TOTAL_ANNOTATION_SIZE} bytes")
    return errs


def validate_label_selector(selector: dict, path: str) -> list[str]:
    """metav1validation.ValidateLabelSelector (label values checked, as 1.24+ does on create)."""
    errs = []
    for key, value in (selector.get("matchLabels") or {}).items():
        errs += [f"{path}.matchLabels: Invalid value: {key!r}: {e}" for e in is_qualified_name(key)]
        errs += [f"{path}.matchLabels: Invalid value: {value!r}: {e}" for e in is_label_value(value)]
    for i, req in enumerate(selector.get("matchExpressions") or []):
        where = f"{path}.matchExpressions[{i}]"
        operator, values = req.get("operator"), req.get("values") or []
        if operator in ("In", "NotIn") and not values:
            errs.append(f"{where}.values: Required value: must be specified when `operator` is 'In' or 'NotIn'")
        elif operator in ("Exists", "DoesNotExist") and values:
            errs.append(f"{where}.values: Forbidden: may not be specified when `operator` is 'Exists' or "
                        f"'DoesNotExist'")
        elif operator not in SELECTOR_OPERATORS:
            errs.append(f"{where}.operator: Invalid value: {operator!r}: not a valid selector operator")
        errs += [f"{where}.key: Invalid value: {req.get('key')!r}: {e}" for e in is_qualified_name(req.get("key") or "")]
        for j, value in enumerate(values):
            errs += [f"{where}.values[{j}]: Invalid value: {value!r}: {e}" for e in is_label_value(value)]
    return errs


def validate_service(service: dict, path: str) -> list[str]:
    """webhook.ValidateWebhookService."""
    errs = []
    if not service.get("name"):
        errs.append(f"{path}.name: Required value: service name is required")
    if not service.get("namespace"):
        errs.append(f"{path}.namespace: Required value: service namespace is required")
    port = service.get("port", 443)
    if not isinstance(port, int) or not 1 <= port <= 65535:
        errs.append(f"{path}.port: Invalid value: {port!r}: port is not valid: must be between 1 and 65535, inclusive")
    url_path = service.get("path")
    if url_path is None or url_path in ("", "/"):
        return errs
    if url_path == "//":
        return errs + [f"{path}.path: Invalid value: {url_path!r}: segment[0] may not be empty"]
    if not url_path.startswith("/"):
        errs.append(f"{path}.path: Invalid value: {url_path!r}: must start with a '/'")
    to_check = url_path[1:]
    if to_check.endswith("/"):
        to_check = to_check[:-1]
    for i, step in enumerate(to_check.split("/")):
        if not step:
            errs.append(f"{path}.path: Invalid value: {url_path!r}: segment[{i}] may not be empty")
            continue
        errs += [f"{path}.path: Invalid value: {url_path!r}: segment[{i}]: {e}" for e in is_dns1123_subdomain(step)]
    return errs


def _validate_resources(resources: list[str], path: str) -> list[str]:
    """validateResources (subresources allowed, as for webhooks)."""
    errs = []
    if not resources:
        errs.append(f"{path}: Required value")
    with_wildcard_sub: set[str] = set()
    sub_with_wildcard_res: set[str] = set()
    double = single = plain = False
    for i, res_sub in enumerate(resources):
        if not res_sub:
            errs.append(f"{path}[{i}]: Required value")
            continue
        double |= res_sub == "*/*"
        single |= res_sub == "*"
        parts = res_sub.split("/", 1)
        if len(parts) == 1:
            plain = res_sub != "*"
            continue
        res, sub = parts
        if res in with_wildcard_sub:
            errs.append(f"{path}[{i}]: Invalid value: {res_sub!r}: if '{res}/*' is present, must not specify {res_sub}")
        if sub in sub_with_wildcard_res:
            errs.append(f"{path}[{i}]: Invalid value: {res_sub!r}: if '*/{sub}' is present, must not specify {res_sub}")
        if sub == "*":
            with_wildcard_sub.add(res)
        if res == "*":
            sub_with_wildcard_res.add(sub)
    if len(resources) > 1 and double:
        errs.append(f"{path}: Invalid value: if '*/*' is present, must not specify other resources")
    if single and plain:
        errs.append(f"{path}: Invalid value: if '*' is present, must not specify other resources without subresources")
    return errs


def validate_rule(rule: dict, path: str) -> list[str]:
    """validateRuleWithOperations + validateRule."""
    errs = []
    operations = rule.get("operations") or []
    if not operations:
        errs.append(f"{path}.operations: Required value")
    if len(operations) > 1 and "*" in operations:
        errs.append(f"{path}.operations: Invalid value: if '*' is present, must not specify other operations")
    errs += [f"{path}.operations[{i}]: Unsupported value: {op!r}" for i, op in enumerate(operations)
             if op not in OPERATIONS]
    groups, versions = rule.get("apiGroups") or [], rule.get("apiVersions") or []
    if not groups:
        errs.append(f"{path}.apiGroups: Required value")
    if len(groups) > 1 and "*" in groups:
        errs.append(f"{path}.apiGroups: Invalid value: if '*' is present, must not specify other API groups")
    if not versions:
        errs.append(f"{path}.apiVersions: Required value")
    if len(versions) > 1 and "*" in versions:
        errs.append(f"{path}.apiVersions: Invalid value: if '*' is present, must not specify other API versions")
    errs += [f"{path}.apiVersions[{i}]: Required value" for i, v in enumerate(versions) if not v]
    errs += _validate_resources(rule.get("resources") or [], f"{path}.resources")
    if rule.get("scope") not in SCOPES:
        errs.append(f"{path}.scope: Unsupported value: {rule.get('scope')!r}")
    return errs


def _validate_match_conditions(conditions: list[dict], path: str) -> list[str]:
    """validateMatchConditions without compiling CEL: count, unique qualified names, expressions present."""
    errs = []
    if len(conditions) > MAX_MATCH_CONDITIONS:
        errs.append(f"{path}: Too many: {len(conditions)}: must have at most {MAX_MATCH_CONDITIONS} items")
    seen: set[str] = set()
    for i, condition in enumerate(conditions):
        name = condition.get("name") or ""
        if not name:
            errs.append(f"{path}[{i}].name: Required value")
        else:
            errs += [f"{path}[{i}].name: Invalid value: {name!r}: {e}" for e in is_qualified_name(name)]
            if name in seen:
                errs.append(f"{path}[{i}].name: Duplicate value: {name!r}")
            seen.add(name)
        if not (condition.get("expression") or "").strip():
            errs.append(f"{path}[{i}].expression: Required value")
    return errs


def default_webhook_configuration(doc: dict) -> dict:
    """The object as the API server stores it: SetDefaults_* of admissionregistration v1beta1 or v1."""
    out = copy.deepcopy(doc)
    beta = out["apiVersion"].endswith("/v1beta1")
    mutating = out["kind"] == "MutatingWebhookConfiguration"
    for hook in out.get("webhooks") or []:
        hook.setdefault("failurePolicy", "Ignore" if beta else "Fail")
        hook.setdefault("matchPolicy", "Exact" if beta else "Equivalent")
        hook.setdefault("namespaceSelector", {})
        hook.setdefault("objectSelector", {})
        hook.setdefault("timeoutSeconds", 30 if beta else 10)
        if beta:
            hook.setdefault("sideEffects", "Unknown")
            hook.setdefault("admissionReviewVersions", ["v1beta1"])
        if mutating:
            hook.setdefault("reinvocationPolicy", "Never")
        for rule in hook.get("rules") or []:
            rule.setdefault("scope", "*")
        service = (hook.get("clientConfig") or {}).get("service")
        if service is not None:
            service.setdefault("port", 443)
    return out


def validate_webhook_configuration(doc: dict, version: str) -> list[str]:
    """Every error the API server `version` reports creating `doc` (a Mutating/ValidatingWebhookConfiguration)."""
    doc = default_webhook_configuration(doc)
    mutating = doc["kind"] == "MutatingWebhookConfiguration"
    errs = validate_object_meta(doc.get("metadata") or {})
    names: set[str] = set()
    accepted = accepted_review_versions(version)
    for i, hook in enumerate(doc.get("webhooks") or []):
        path = f"webhooks[{i}]"
        name = hook.get("name") or ""
        if not name:
            errs.append(f"{path}.name: Required value")
        elif is_dns1123_subdomain(name):
            errs.append(f"{path}.name: Invalid value: {name!r}: {','.join(is_dns1123_subdomain(name))}")
        elif len(name.split(".")) < 3:
            errs.append(f"{path}.name: Invalid value: {name!r}: should be a domain with at least three segments "
                        f"separated by dots")
        if name:
            if name in names:
                errs.append(f"{path}.name: Duplicate value: {name!r}")
            names.add(name)
        for j, rule in enumerate(hook.get("rules") or []):
            errs += validate_rule(rule, f"{path}.rules[{j}]")
        if hook["failurePolicy"] not in FAILURE_POLICIES:
            errs.append(f"{path}.failurePolicy: Unsupported value: {hook['failurePolicy']!r}")
        if hook["matchPolicy"] not in MATCH_POLICIES:
            errs.append(f"{path}.matchPolicy: Unsupported value: {hook['matchPolicy']!r}")
        side_effects = hook.get("sideEffects")
        if side_effects is None:
            errs.append(f"{path}.sideEffects: Required value: must specify one of None, NoneOnDryRun")
        elif side_effects not in NO_SIDE_EFFECT_CLASSES:
            errs.append(f"{path}.sideEffects: Unsupported value: {side_effects!r}: supported values: \"None\", "
                        f"\"NoneOnDryRun\"")
        timeout = hook["timeoutSeconds"]
        if not isinstance(timeout, int) or not 1 <= timeout <= 30:
            errs.append(f"{path}.timeoutSeconds: Invalid value: {timeout!r}: the timeout value must be between 1 "
                        f"and 30 seconds")
        errs += validate_label_selector(hook["namespaceSelector"], f"{path}.namespaceSelector")
        errs += validate_label_selector(hook["objectSelector"], f"{path}.objectSelector")
        if mutating and hook["reinvocationPolicy"] not in REINVOCATION_POLICIES:
            errs.append(f"{path}.reinvocationPolicy: Unsupported value: {hook['reinvocationPolicy']!r}")
        client = hook.get("clientConfig") or {}
        if ("url" in client) == ("service" in client):
            errs.append(f"{path}.clientConfig: Required value: exactly one of url or service is required")
        elif "service" in client:
            errs += validate_service(client["service"], f"{path}.clientConfig.service")
        errs += _validate_match_conditions(hook.get("matchConditions") or [], f"{path}.matchConditions")
        versions = hook.get("admissionReviewVersions") or []
        where = f"{path}.admissionReviewVersions"
        if not versions:
            errs.append(f"{where}: Required value: must specify one of {', '.join(accepted)}")
        seen: set[str] = set()
        for j, v in enumerate(versions):
            if v in seen:
                errs.append(f"{where}[{j}]: Invalid value: {v!r}: duplicate version")
                continue
            seen.add(v)
            errs += [f"{where}[{j}]: Invalid value: {v!r}: {e}" for e in is_dns1035_label(v)]
        if versions and not seen & set(accepted):
            errs.append(f"{where}: Invalid value: {versions}: must include at least one of "
                        f"{', '.join(accepted)}")
    return errs

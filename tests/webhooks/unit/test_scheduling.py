"""The RuntimeClass plugin's scheduling merges, mirroring kubernetes pkg/util/tolerations tests."""

import pytest

from webhooks.scheduling import (NodeSelectorConflict, is_superset, merge_node_selector, merge_tolerations,
                                 tolerates_no_execute_taint, with_edge_toleration_seconds)

# The named tolerations of kubernetes/pkg/util/tolerations/tolerations_test.go.
TOLERATIONS = {
    "all": {"operator": "Exists"},
    "all-nosched": {"operator": "Exists", "effect": "NoSchedule"},
    "all-noexec": {"operator": "Exists", "effect": "NoExecute"},
    "foo": {"key": "foo", "operator": "Exists"},
    "foo-bar": {"key": "foo", "operator": "Equal", "value": "bar"},
    "foo-nosched": {"key": "foo", "operator": "Exists", "effect": "NoSchedule"},
    "foo-bar-nosched": {"key": "foo", "operator": "Equal", "value": "bar", "effect": "NoSchedule"},
    "foo-baz-nosched": {"key": "foo", "operator": "Equal", "value": "baz", "effect": "NoSchedule"},
    "faz-nosched": {"key": "faz", "operator": "Exists", "effect": "NoSchedule"},
    "faz-baz-nosched": {"key": "faz", "operator": "Equal", "value": "baz", "effect": "NoSchedule"},
    "foo-prefnosched": {"key": "foo", "operator": "Exists", "effect": "PreferNoSchedule"},
    "foo-noexec": {"key": "foo", "operator": "Exists", "effect": "NoExecute"},
    "foo-bar-noexec": {"key": "foo", "operator": "Equal", "value": "bar", "effect": "NoExecute"},
    "foo-noexec-10": {"key": "foo", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 10},
    "foo-noexec-0": {"key": "foo", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 0},
    "foo-bar-noexec-10": {"key": "foo", "operator": "Equal", "value": "bar", "effect": "NoExecute",
                          "tolerationSeconds": 10},
}

# TestIsSuperset: each toleration is a superset of itself and exactly of these others.
SUPERSETS = {
    "all": [n for n in TOLERATIONS if n != "all"],
    "all-nosched": ["foo-nosched", "foo-bar-nosched", "foo-baz-nosched", "faz-nosched", "faz-baz-nosched"],
    "all-noexec": ["foo-noexec", "foo-bar-noexec", "foo-noexec-10", "foo-noexec-0", "foo-bar-noexec-10"],
    "foo": ["foo-bar", "foo-nosched", "foo-bar-nosched", "foo-baz-nosched", "foo-prefnosched", "foo-noexec",
            "foo-bar-noexec", "foo-noexec-10", "foo-noexec-0", "foo-bar-noexec-10"],
    "foo-bar": ["foo-bar-nosched", "foo-bar-noexec", "foo-bar-noexec-10"],
    "foo-nosched": ["foo-bar-nosched", "foo-baz-nosched"],
    "foo-bar-nosched": [],
    "faz-nosched": ["faz-baz-nosched"],
    "faz-baz-nosched": [],
    "foo-prefnosched": [],
    "foo-noexec": ["foo-bar-noexec", "foo-noexec-10", "foo-noexec-0", "foo-bar-noexec-10"],
    "foo-bar-noexec": ["foo-bar-noexec-10"],
    "foo-noexec-10": ["foo-noexec-0", "foo-bar-noexec-10"],
    "foo-noexec-0": [],
    "foo-bar-noexec-10": [],
}


def tols(*names):
    return [dict(TOLERATIONS[n]) for n in names]


@pytest.mark.parametrize("super_name", sorted(SUPERSETS))
def test_is_superset_matches_go_table(super_name):
    for name in TOLERATIONS:
        expected = name == super_name or name in SUPERSETS[super_name]
        assert is_superset(TOLERATIONS[super_name], TOLERATIONS[name]) is expected, (super_name, name)


@pytest.mark.parametrize("a, b, expected", [
    (["foo-bar-nosched", "faz-baz-nosched", "foo-noexec-10"], ["foo-prefnosched", "foo-baz-nosched"],
     ["foo-bar-nosched", "faz-baz-nosched", "foo-noexec-10", "foo-prefnosched", "foo-baz-nosched"]),
    (["foo-bar-nosched", "faz-baz-nosched", "foo-noexec-10"], ["foo-bar-nosched", "faz-baz-nosched", "foo-noexec-10"],
     ["foo-bar-nosched", "faz-baz-nosched", "foo-noexec-10"]),
    (["foo-bar-nosched", "foo-baz-nosched"], ["foo-nosched", "faz-baz-nosched"], ["foo-nosched", "faz-baz-nosched"]),
    (["foo-bar-nosched", "foo-baz-nosched", "foo-noexec-10"], ["all"], ["all"]),
    (["all"], ["foo-bar-nosched", "foo-baz-nosched", "foo-noexec-10"], ["all"]),
], ids=["disjoint", "duplicate", "merge-redundant", "merge-all", "merge-into-all"])
def test_merge_tolerations_matches_go_table(a, b, expected):
    assert merge_tolerations(tols(*a), tols(*b)) == tols(*expected)


def test_equal_operator_does_not_cover_empty_operator():
    # Go: an Equal superset only covers tolerations whose operator is literally "Equal".
    assert not is_superset({"key": "k", "operator": "Equal", "value": "v"}, {"key": "k", "value": "v"})
    assert is_superset({"key": "k", "value": "v"}, {"key": "k", "operator": "Equal", "value": "v"})


def test_profile_toleration_already_covered_by_pod_is_not_added():
    pod = [{"key": "sandbox.io/runtime", "operator": "Exists", "effect": "NoSchedule"},
           {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
            "tolerationSeconds": 300}]
    runtime = [{"key": "sandbox.io/runtime", "operator": "Equal", "value": "runv", "effect": "NoSchedule"}]
    assert merge_tolerations(pod, runtime) == pod


def test_profile_toleration_is_appended_after_the_pods_and_inputs_are_untouched():
    pod = [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
            "tolerationSeconds": 300}]
    runtime = [{"key": "sandbox.io/runtime", "operator": "Equal", "value": "runv", "effect": "NoSchedule"}]
    merged = merge_tolerations(pod, runtime)
    assert merged == pod + runtime
    merged[0]["tolerationSeconds"] = 1
    assert pod[0]["tolerationSeconds"] == 300
    assert merge_tolerations(merged, runtime) == merged


def test_merge_of_nothing_is_empty():
    assert merge_tolerations([], []) == []


def test_node_selector_merges_into_missing_or_existing_selector():
    assert merge_node_selector(None, {"runtime": "runv"}) == {"runtime": "runv"}
    assert merge_node_selector({}, {"runtime": "runv"}) == {"runtime": "runv"}
    pod = {"disktype": "ssd", "runtime": "runv"}
    merged = merge_node_selector(pod, {"runtime": "runv", "sandbox.io/gvisor": "true"})
    assert list(merged.items()) == [("disktype", "ssd"), ("runtime", "runv"), ("sandbox.io/gvisor", "true")]
    assert pod == {"disktype": "ssd", "runtime": "runv"}
    assert merge_node_selector({"a": "b"}, {}) == {"a": "b"}


def test_node_selector_conflict_has_the_builtin_text():
    with pytest.raises(NodeSelectorConflict) as info:
        merge_node_selector({"runtime": "runc"}, {"runtime": "runv"})
    assert str(info.value) == ("conflict: runtimeClass.scheduling.nodeSelector[runtime] = runv; "
                               "pod.spec.nodeSelector[runtime] = runc")
    assert isinstance(info.value, ValueError)


# ---- edge grace: the taint manager evicts after the minimum tolerationSeconds of the matching tolerations ---

NOT_READY = "node.kubernetes.io/not-ready"
UNREACHABLE = "node.kubernetes.io/unreachable"


def eviction_seconds(tolerations, taint_key):
    """What the taint manager waits for a value-less NoExecute taint (getMinTolerationTime); None = forever."""
    matching = [t for t in tolerations if tolerates_no_execute_taint(t, taint_key)]
    assert matching, "not tolerated at all: evicted at once"
    seconds = [t["tolerationSeconds"] for t in matching if t.get("tolerationSeconds") is not None]
    return min(seconds) if seconds else None


@pytest.mark.parametrize("tolerations", [
    [],  # DefaultTolerationSeconds off
    [{"key": NOT_READY, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
     {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
    # A wildcard that used to shadow the edge tolerations appended after it.
    [{"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60},
     {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
    [{"key": UNREACHABLE, "operator": "Equal", "effect": "NoExecute", "tolerationSeconds": 0}],
    [{"operator": "Exists", "tolerationSeconds": 10, "effect": "NoExecute"}, {"key": "other", "operator": "Exists"}],
])
def test_edge_tolerations_decide_the_eviction_of_both_taints(tolerations):
    result = with_edge_toleration_seconds(tolerations, 86400)
    for taint in (NOT_READY, UNREACHABLE):
        assert eviction_seconds(result, taint) == 86400
    assert with_edge_toleration_seconds(result, 86400) == result  # idempotent
    assert [t for t in result if t.get("key") == "other"] == [t for t in tolerations if t.get("key") == "other"]


def test_tolerating_longer_or_forever_is_kept():
    forever = [{"operator": "Exists"}]
    assert with_edge_toleration_seconds(forever, 86400) == forever
    assert eviction_seconds(forever, NOT_READY) is None
    longer = [{"key": NOT_READY, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 90000},
              {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}]
    assert with_edge_toleration_seconds(longer, 86400) == longer


@pytest.mark.parametrize("toleration, tolerated", [
    ({"operator": "Exists"}, True),
    ({"operator": "Exists", "effect": "NoSchedule"}, False),
    ({"key": NOT_READY, "operator": "Equal"}, True),
    ({"key": NOT_READY, "operator": "Equal", "value": "x"}, False),
    ({"key": "other", "operator": "Exists", "effect": "NoExecute"}, False),
])
def test_which_tolerations_match_the_edge_taints(toleration, tolerated):
    assert tolerates_no_execute_taint(toleration, NOT_READY) is tolerated

"""The one rule for what the scheduler sums for a pod (sandgate.core.podrequests), and its users agree on it."""

from decimal import Decimal

import pytest

from sandgate.core.jsonshape import ShapeError
from sandgate.core.podrequests import pod_requests
from sandgate.core.quantity import QuantityError
from sandgate.demo.scheduler import pod_request
from scheduler_ext.objects import effective_requests

MI = 1024 * 1024


def ctr(name, requests=None, **extra):
    return {"name": name, "resources": {"requests": requests or {}}, **extra}


SIDECAR_POD = {"containers": [ctr("app", {"cpu": "100m", "memory": "100Mi"})],
               "initContainers": [ctr("side", {"cpu": "50m", "memory": "50Mi"}, restartPolicy="Always"),
                                  ctr("init", {"cpu": "10m", "memory": "120Mi"})],
               "overhead": {"cpu": "100m", "memory": "50Mi"}}


def test_app_containers_and_sidecars_run_together_each_init_step_beside_earlier_sidecars():
    # cpu: app 100m + sidecar 50m; memory: the init step 120Mi beside the 50Mi sidecar.
    assert pod_requests(SIDECAR_POD, include_overhead=False) == {"cpu": Decimal("0.15"), "memory": 170 * MI}
    assert pod_requests(SIDECAR_POD) == {"cpu": Decimal("0.25"), "memory": 220 * MI}


def test_largest_init_container_and_every_resource_name():
    spec = {"containers": [ctr("a", {"cpu": "250m", "example.com/gpu": "1"}), ctr("b", {"cpu": "100m"})],
            "initContainers": [ctr("i1", {"cpu": "500m", "memory": "32Mi"}), ctr("i2", {"memory": "300Mi"})]}
    assert pod_requests(spec) == {"cpu": Decimal("0.5"), "memory": 300 * MI, "example.com/gpu": 1}
    assert pod_requests({}) == {}


def test_pod_level_requests_replace_the_container_sums_for_cpu_memory_and_hugepages_only():
    spec = {"containers": [ctr("a", {"cpu": "1", "memory": "1Gi", "example.com/gpu": "1"})],
            "resources": {"requests": {"memory": "4Gi", "hugepages-2Mi": "2Mi", "ephemeral-storage": "1Gi"},
                          "limits": {"memory": "8Gi"}}}
    assert pod_requests(spec) == {"cpu": 1, "memory": 4096 * MI, "hugepages-2Mi": 2 * MI, "example.com/gpu": 1}


def test_the_extender_and_the_demo_sum_the_same_way():
    assert effective_requests(SIDECAR_POD) == (150, 170 * MI)
    assert pod_request({"spec": SIDECAR_POD}, count_overhead=False) == (150, 170 * MI)
    assert pod_request({"spec": SIDECAR_POD}, count_overhead=True) == (250, 220 * MI)
    # The scheduler rounds the exact total, not each container.
    halves = {"containers": [ctr("a", {"cpu": "0.0005"}), ctr("b", {"cpu": "0.0005"})]}
    assert effective_requests(halves)[0] == pod_request({"spec": halves}, False)[0] == 1


@pytest.mark.parametrize("spec, error, field", [
    ({"containers": {"a": 1}}, ShapeError, "spec.containers: must be a list"),
    ({"containers": [ctr("a", {"cpu": "lots"})]}, QuantityError, "spec.containers[0].resources.requests.cpu"),
    ({"containers": [], "initContainers": ["x"]}, ShapeError, "spec.initContainers[0]: must be an object"),
    ({"containers": [], "resources": {"requests": {"memory": "1Q"}}}, QuantityError, "spec.resources.requests.memory"),
    ({"containers": [], "overhead": {"cpu": []}}, QuantityError, "spec.overhead.cpu"),
])
def test_bad_fields_are_named(spec, error, field):
    with pytest.raises(error) as info:
        pod_requests(spec)
    assert str(info.value).startswith(field)

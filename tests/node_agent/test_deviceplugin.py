"""The agent's device plugin against a stand-in kubelet: a real gRPC Registration server on a unix socket
that, like the kubelet, dials the plugin's socket and follows its ListAndWatch stream."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from node_agent.deviceplugin import DevicePlugins, Slots, next_slots
from node_agent.deviceplugin_v1beta1 import api_pb2, api_pb2_grpc, regenerate


class StandInKubelet(api_pb2_grpc.RegistrationServicer):
    """kubelet.sock: records registrations, then watches each plugin's devices as the device manager does."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.registrations: list[api_pb2.RegisterRequest] = []
        self.devices: dict[str, list[tuple[str, str]]] = {}  # resource -> latest list of (ID, health)
        self.cond = threading.Condition()
        self.channels: list[grpc.Channel] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_RegistrationServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix://{directory / 'kubelet.sock'}")
        self.server.start()

    def Register(self, request, context):  # noqa: N802 - gRPC method name
        with self.cond:
            self.registrations.append(request)
            self.cond.notify_all()
        channel = grpc.insecure_channel(f"unix://{self.directory / request.endpoint}")
        self.channels.append(channel)
        stub = api_pb2_grpc.DevicePluginStub(channel)
        threading.Thread(target=self._follow, args=(stub, request.resource_name), daemon=True).start()
        return api_pb2.Empty()

    def _follow(self, stub, resource: str) -> None:
        try:
            for response in stub.ListAndWatch(api_pb2.Empty()):
                with self.cond:
                    self.devices[resource] = [(d.ID, d.health) for d in response.devices]
                    self.cond.notify_all()
        except grpc.RpcError:
            pass  # the plugin went away (or we did)

    def wait(self, predicate, what: str, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out waiting for {what}; devices={self.devices}, "
                                         f"registrations={len(self.registrations)}")
                self.cond.wait(remaining)

    def stop(self) -> None:
        for channel in self.channels:
            channel.close()
        self.server.stop(0).wait()


@pytest.fixture
def plugin_dir():
    # unix socket paths are limited to 107 bytes: keep clear of pytest's long tmp paths
    path = Path(tempfile.mkdtemp(prefix="dp-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def kubelet(plugin_dir):
    stand_in = StandInKubelet(plugin_dir)
    yield stand_in
    stand_in.stop()


@pytest.fixture
def plugins(plugin_dir):
    started = DevicePlugins(plugin_dir, watch_interval=0.1).start()
    yield started
    started.stop()


RUNV = "sandgate.io/sandbox-runv"
GVISOR = "sandgate.io/sandbox-gvisor"


def test_registers_each_handler_and_lists_one_healthy_device_per_slot(kubelet, plugins, plugin_dir):
    plugins.update({"runv", "gvisor"}, {"runv": 3})
    kubelet.wait(lambda: len(kubelet.devices) == 2, "both resources listed")
    by_resource = {r.resource_name: r for r in kubelet.registrations}
    assert set(by_resource) == {RUNV, GVISOR}
    assert by_resource[RUNV].version == "v1beta1"
    assert by_resource[RUNV].endpoint == "sandgate-runv.sock" and (plugin_dir / "sandgate-runv.sock").exists()
    assert kubelet.devices[RUNV] == [("runv-0", "Healthy"), ("runv-1", "Healthy"), ("runv-2", "Healthy")]
    assert kubelet.devices[GVISOR] == []  # not usable on this node: nothing allocatable


def test_an_unusable_runtime_turns_its_devices_unhealthy_and_back(kubelet, plugins):
    plugins.update({"runv"}, {"runv": 2})
    kubelet.wait(lambda: kubelet.devices.get(RUNV) == [("runv-0", "Healthy"), ("runv-1", "Healthy")], "healthy")
    plugins.update({"runv"}, {})  # the agent no longer advertises runv (shim gone, probe failing)
    kubelet.wait(lambda: kubelet.devices.get(RUNV) == [("runv-0", "Unhealthy"), ("runv-1", "Unhealthy")],
                 "unhealthy")
    plugins.update({"runv"}, {"runv": 4})
    kubelet.wait(lambda: kubelet.devices.get(RUNV) == [(f"runv-{i}", "Healthy") for i in range(4)], "recovered")
    assert len(kubelet.registrations) == 1  # health changes flow through the stream, not re-registration


def test_allocate_answers_for_known_devices_and_refuses_others(kubelet, plugins, plugin_dir):
    plugins.update({"runv"}, {"runv": 2})
    kubelet.wait(lambda: RUNV in kubelet.devices, "listed")
    with grpc.insecure_channel(f"unix://{plugin_dir / 'sandgate-runv.sock'}") as channel:
        stub = api_pb2_grpc.DevicePluginStub(channel)
        assert stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=5) == api_pb2.DevicePluginOptions()
        answer = stub.Allocate(api_pb2.AllocateRequest(container_requests=[
            api_pb2.ContainerAllocateRequest(devices_ids=["runv-1"])]), timeout=5)
        assert dict(answer.container_responses[0].envs) == {"SANDGATE_SANDBOX_SLOTS": "runv-1"}
        with pytest.raises(grpc.RpcError) as refused:
            stub.Allocate(api_pb2.AllocateRequest(container_requests=[
                api_pb2.ContainerAllocateRequest(devices_ids=["runv-9"])]), timeout=5)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_registers_again_when_the_kubelet_restarts(plugin_dir, plugins):
    first = StandInKubelet(plugin_dir)
    try:
        plugins.update({"runv"}, {"runv": 1})
        first.wait(lambda: first.devices.get(RUNV) == [("runv-0", "Healthy")], "first registration")
    finally:
        first.stop()
    # A restarting kubelet removes every socket in the directory and serves a new kubelet.sock.
    for sock in plugin_dir.glob("*.sock"):
        sock.unlink()
    second = StandInKubelet(plugin_dir)
    try:
        second.wait(lambda: second.devices.get(RUNV) == [("runv-0", "Healthy")], "registration with the new kubelet")
        assert [r.resource_name for r in second.registrations] == [RUNV]
    finally:
        second.stop()


def test_waits_for_the_kubelet_before_registering(plugin_dir, plugins):
    plugins.update({"runv"}, {"runv": 1})  # no kubelet.sock yet: nothing to register with, no error
    time.sleep(0.3)
    kubelet = StandInKubelet(plugin_dir)
    try:
        kubelet.wait(lambda: RUNV in kubelet.devices, "late registration")
    finally:
        kubelet.stop()


def test_slot_rules():
    assert next_slots(None, 3) == Slots(3, True)
    assert next_slots(Slots(3, True), None) == Slots(3, False)  # keep the IDs running pods hold
    assert next_slots(Slots(3, True), 0) == Slots(3, False)
    assert next_slots(None, None) == Slots(0, False)
    assert len(Slots(10**6, True).devices("runv")) == 1024


def test_committed_stubs_match_the_proto(tmp_path):
    regenerate.generate(tmp_path)
    for name in ("api_pb2.py", "api_pb2_grpc.py"):
        fresh = (tmp_path / "node_agent/deviceplugin_v1beta1" / name).read_bytes()
        committed = (regenerate.REPO / "node_agent/deviceplugin_v1beta1" / name).read_bytes()
        assert fresh == committed, "run: python3 -m node_agent.deviceplugin_v1beta1.regenerate"


def test_the_agent_loop_advertises_its_capacities_and_follows_the_runtime(root, tables, policy_file, fake_api,
                                                                          tmp_path, plugin_dir):
    """The real `sandgate agent` loop: slots = the published capacity; a runtime that goes turns its devices unhealthy."""
    import signal
    import subprocess

    from agent_proc import agent

    root.config(tables.V2_HEAD + tables.runtime(tables.V2, "runc", "io.containerd.runc.v2")
                + tables.runtime(tables.V2, "kata", "io.containerd.kata.v2"))
    shim = root.shim("containerd-shim-kata-v2")
    root.kvm()
    kubelet = StandInKubelet(plugin_dir)
    log_path = tmp_path / "agent.log"
    with open(log_path, "w") as log_file:
        proc = agent("--config", str(policy_file()), "--node-name", "n1", "--root", str(root.path),
                     "--kubeconfig", str(fake_api.kubeconfig(tmp_path)), "--interval", "0.3",
                     "--metrics-host", "127.0.0.1", "--metrics-port", "0", "--device-plugin-dir", str(plugin_dir),
                     stdout=log_file, stderr=subprocess.STDOUT)
    kata = "sandgate.io/sandbox-kata"
    try:
        # the capacity the agent publishes for kata on this node (44, as in test_loop) is its slot count
        kubelet.wait(lambda: kubelet.devices.get(kata) == [(f"kata-{i}", "Healthy") for i in range(44)],
                     "44 healthy kata slots", timeout=30)
        kubelet.wait(lambda: len(kubelet.registrations) == 2, "both handlers registered")
        assert {r.resource_name for r in kubelet.registrations} == {kata, "sandgate.io/sandbox-runsc"}
        shim.unlink()  # the shim is gone: kata is not usable any more
        kubelet.wait(lambda: kubelet.devices.get(kata) == [(f"kata-{i}", "Unhealthy") for i in range(44)],
                     "unhealthy kata slots", timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
        kubelet.stop()
    assert code == 0, log_path.read_text()
    assert not (plugin_dir / "sandgate-kata.sock").exists()  # the agent removes its sockets when it stops

"""The CRI client against a real containerd, and its version fallback and deadlines against gRPC stand-ins."""

from __future__ import annotations

import os
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest

import containerd_harness
from containerd_harness import Containerd
from node_agent.cri import regenerate
from node_agent.cri.client import CriClient, CriError, api, socket_path

needs_containerd = pytest.mark.skipif(not containerd_harness.available(), reason="containerd/ctr not installed")


def test_committed_stubs_match_the_proto(tmp_path):
    regenerate.generate(tmp_path)
    fresh = (tmp_path / "node_agent/cri/api_pb2.py").read_bytes()
    committed = (regenerate.REPO / "node_agent/cri/api_pb2.py").read_bytes()
    assert fresh == committed, "run: python3 -m node_agent.cri.regenerate"


def test_endpoints_resolve_to_socket_paths(tmp_path):
    assert socket_path("unix:///run/containerd/containerd.sock") == Path("/run/containerd/containerd.sock")
    assert socket_path("/run/crio/crio.sock", tmp_path) == tmp_path / "run/crio/crio.sock"
    assert socket_path("unix:///run/containerd/containerd.sock", tmp_path) == tmp_path / "run/containerd/containerd.sock"
    for bad in ("tcp://127.0.0.1:1234", "unix://relative.sock", "containerd.sock"):
        with pytest.raises(ValueError, match="not unix:///<absolute path>"):
            socket_path(bad)
    with pytest.raises(ValueError, match="too long for a unix socket"):
        CriClient("/tmp/" + "x" * 120)


@needs_containerd
def test_a_socket_path_longer_than_sun_path_is_reached_through_a_short_link(tmp_path):
    with Containerd.start() as ctd:
        deep = tmp_path / ("d" * 60) / ("e" * 60)
        deep.mkdir(parents=True)
        (deep / "containerd.sock").symlink_to(ctd.socket)
        client = CriClient(deep / "containerd.sock")
        link_dir = client._short_dir
        assert client.version().runtime_name == "containerd"
        client.close()
        assert not os.path.exists(link_dir)


@needs_containerd
def test_real_containerd_answers_version_status_and_lists():
    with Containerd.start() as ctd, ctd.cri() as client:
        version = client.version()
        assert version.runtime_name == "containerd"
        assert version.runtime_version.startswith("1.6.")
        assert version.api == "runtime.v1"
        status = client.status(verbose=True)
        assert status.runtime_ready and status.not_ready_reason() == ""
        assert "NetworkReady" in status.conditions  # no CNI config in the harness: not ready, and says why
        config = status.info["config"]  # the effective CRI config as JSON
        assert config["restrictOOMScoreAdj"] is True
        assert set(config["containerd"]["runtimes"]) == {"runc"}
        assert client.status().info == {}  # info only when verbose
        assert client.list_pod_sandbox() == []
        assert client.list_containers() == []
        with pytest.raises(CriError) as err:
            client.container_status("no-such-container")
        assert err.value.code == grpc.StatusCode.NOT_FOUND and not err.value.unreachable


def test_unreachable_socket_is_a_cri_error(tmp_path):
    with CriClient(tmp_path / "missing.sock", timeout=0.5) as client, pytest.raises(CriError) as err:
        client.version()
    assert err.value.unreachable and err.value.rpc == "Version"


class StandIn:
    """A gRPC server on a unix socket answering the CRI `Version` RPC under the given packages only."""

    def __init__(self, path: Path, packages: tuple[str, ...], block: threading.Event | None = None):
        def version(request: api.VersionRequest, context) -> api.VersionResponse:
            if block is not None:
                block.wait(10)
            return api.VersionResponse(version="0.1.0", runtime_name="stand-in", runtime_version="1.4.0",
                                       runtime_api_version=request.version)

        handlers = [grpc.method_handlers_generic_handler(f"{package}.RuntimeService", {
            "Version": grpc.unary_unary_rpc_method_handler(version, api.VersionRequest.FromString,
                                                           api.VersionResponse.SerializeToString)})
            for package in packages]
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=handlers)
        self.server.add_insecure_port(f"unix://{path}")
        self.server.start()

    def close(self) -> None:
        self.server.stop(grace=None)


def test_falls_back_to_v1alpha2_when_v1_is_unimplemented(tmp_path):
    server = StandIn(tmp_path / "old.sock", ("runtime.v1alpha2",))
    try:
        with CriClient(tmp_path / "old.sock") as client:
            assert client.api == "runtime.v1"
            version = client.version()
            assert (version.runtime_name, version.runtime_version, version.api) == ("stand-in", "1.4.0",
                                                                                    "runtime.v1alpha2")
            assert client.api == "runtime.v1alpha2"  # kept for later calls
            client.version()
    finally:
        server.close()


def test_a_runtime_serving_neither_version_is_an_error(tmp_path):
    server = StandIn(tmp_path / "none.sock", ("something.else",))
    try:
        with CriClient(tmp_path / "none.sock") as client, pytest.raises(CriError) as err:
            client.version()
        assert err.value.code == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.close()


def test_every_call_has_a_deadline(tmp_path):
    release = threading.Event()
    server = StandIn(tmp_path / "slow.sock", ("runtime.v1",), block=release)
    try:
        with CriClient(tmp_path / "slow.sock", timeout=0.3) as client, pytest.raises(CriError) as err:
            client.version()
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and err.value.unreachable
    finally:
        release.set()
        server.close()

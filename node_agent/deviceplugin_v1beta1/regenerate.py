"""Regenerate the committed device plugin stubs (api_pb2.py, api_pb2_grpc.py) from api.proto.

Run from the repository root after editing api.proto:
`python3 -m node_agent.deviceplugin_v1beta1.regenerate` (needs the dev dependency grpcio-tools).
The modules are committed so the agent image needs no protoc; tests/node_agent/test_deviceplugin.py
fails when they drift from the proto.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO = "node_agent/deviceplugin_v1beta1/api.proto"


def generate(out_dir: Path) -> None:
    """Write api_pb2.py and api_pb2_grpc.py for PROTO under out_dir/node_agent/deviceplugin_v1beta1/."""
    from grpc_tools import protoc  # dev dependency: only developers regenerate

    (out_dir / "node_agent/deviceplugin_v1beta1").mkdir(parents=True, exist_ok=True)
    code = protoc.main(["grpc_tools.protoc", f"-I{REPO}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
                        str(REPO / PROTO)])
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


if __name__ == "__main__":
    generate(REPO)
    sys.exit(0)

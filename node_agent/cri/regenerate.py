"""Regenerate the committed CRI message stubs (api_pb2.py) from api.proto with grpcio-tools' protoc.

Run from the repository root after editing api.proto: `python3 -m node_agent.cri.regenerate`
(needs the dev dependency grpcio-tools). The module is committed so the agent image needs no
protoc; tests/node_agent/test_cri_client.py fails when it drifts from the proto. No service stub
is generated: client.py binds the same messages to the runtime.v1 or runtime.v1alpha2 service
path, whichever the runtime serves.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO = "node_agent/cri/api.proto"


def generate(out_dir: Path) -> None:
    """Write api_pb2.py for PROTO under out_dir/node_agent/cri/."""
    from grpc_tools import protoc  # dev dependency: only developers regenerate

    (out_dir / "node_agent/cri").mkdir(parents=True, exist_ok=True)
    code = protoc.main(["grpc_tools.protoc", f"-I{REPO}", f"--python_out={out_dir}", str(REPO / PROTO)])
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


if __name__ == "__main__":
    generate(REPO)
    sys.exit(0)

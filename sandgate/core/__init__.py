"""The shared core: contracts, policy, quantities and the serving/informer/lease machinery.

Layering (enforced by tests/test_layers.py): `sandgate.core` imports no component; the components
(`webhooks`, `scheduler_ext`, `node_agent`, `certs`) import the core and never each other; the command
(`sandgate.cli`) and the demo (`sandgate.demo`) sit on top and may import anything.
"""

"""The daemon's API: the generated gRPC stubs in ``v1/`` (from proto/; do not edit them) and
``contract.py``, what the plugin and the daemon agree on beside the messages."""

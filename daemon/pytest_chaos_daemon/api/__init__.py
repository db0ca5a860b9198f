"""Generated gRPC stubs for the daemon's API (from proto/). Do not edit."""

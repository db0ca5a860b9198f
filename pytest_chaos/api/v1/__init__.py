"""Generated stubs, v1 of the daemon's API (from proto/). Do not edit."""

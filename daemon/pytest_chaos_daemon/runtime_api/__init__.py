"""Generated stubs for the container runtimes' APIs (from proto/). Do not edit."""

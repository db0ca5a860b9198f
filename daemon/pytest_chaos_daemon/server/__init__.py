"""The daemon's gRPC server: its command line, the service, interceptors, TLS, health and logs."""

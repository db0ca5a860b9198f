"""Fault kinds, one module per kind. Each exposes an async handler the servicer dispatches to."""

"""Where targets come from: one module per backend, each implementing ``Backend``."""

from __future__ import annotations

from .base import Backend, PodApi

BACKENDS = ("local", "kubernetes")

__all__ = ["BACKENDS", "Backend", "PodApi"]

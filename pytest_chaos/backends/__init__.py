"""Where targets come from: one module per backend, each implementing ``Backend``."""

from __future__ import annotations

from ..defaults import BACKENDS
from .base import Backend, PodApi

__all__ = ["BACKENDS", "Backend", "PodApi"]

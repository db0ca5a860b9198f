"""The plaintext health port: Check always answers; Watch is bounded apart from it.

Behind mutual TLS the daemon serves ``grpc.health.v1.Health`` in full; the
kubelet's gRPC probes cannot speak TLS, so health is served again, alone, on
a plaintext port any pod may reach. A ``Watch`` stream stays open for as long
as its caller likes: four of them once filled the port's one concurrency
bound, every liveness probe then failed and the kubelet restarted the daemon
in a loop. Here ``Check`` (what the probes call: unary, answered at once from
the main server's status) has no bound, and ``Watch`` streams have one of
their own (``MAX_WATCHES``; past it RESOURCE_EXHAUSTED), so open streams cost
a few tasks and never a probe.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .interceptors import Context

MAX_WATCHES = 8


class ProbeHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # the generated base class is untyped
    """Health from ``status`` (the servicer the main port serves): Check unbounded, Watch bounded."""

    def __init__(self, status: Any) -> None:
        self._status = status
        self._watches = 0

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Context) -> health_pb2.HealthCheckResponse:
        response: health_pb2.HealthCheckResponse = await self._status.Check(request, context)
        return response

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Context) -> None:
        if self._watches >= MAX_WATCHES:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{MAX_WATCHES} Watch streams are open on the plaintext health port; use Check (what "
                                "the kubelet's gRPC probe calls), which always answers")
        self._watches += 1
        try:
            await self._status.Watch(request, context)
        finally:
            self._watches -= 1

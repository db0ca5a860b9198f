"""Errors the daemon reports, each tied to the gRPC status code it travels as."""

from __future__ import annotations

import grpc


class DaemonError(Exception):
    """A request failed for a reason the client should see verbatim."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DaemonError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(DaemonError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(DaemonError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(DaemonError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(DaemonError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED



class PermissionDenied(DaemonError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(DaemonError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

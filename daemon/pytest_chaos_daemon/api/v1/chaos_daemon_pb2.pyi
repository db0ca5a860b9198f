import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProcessListSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROCESS_LIST_SOURCE_UNSPECIFIED: _ClassVar[ProcessListSource]
    PROCESS_LIST_SOURCE_PS: _ClassVar[ProcessListSource]
    PROCESS_LIST_SOURCE_PROC: _ClassVar[ProcessListSource]
PROCESS_LIST_SOURCE_UNSPECIFIED: ProcessListSource
PROCESS_LIST_SOURCE_PS: ProcessListSource
PROCESS_LIST_SOURCE_PROC: ProcessListSource

class Injection(_message.Message):
    __slots__ = ("id", "lease")
    ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    id: str
    lease: _duration_pb2.Duration
    def __init__(self, id: _Optional[str] = ..., lease: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class InjectionStatus(_message.Message):
    __slots__ = ("injection_id", "container_id", "pid", "state", "expires_at")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[InjectionStatus.State]
        ONE_SHOT: _ClassVar[InjectionStatus.State]
        ACTIVE: _ClassVar[InjectionStatus.State]
        RECOVERED: _ClassVar[InjectionStatus.State]
    STATE_UNSPECIFIED: InjectionStatus.State
    ONE_SHOT: InjectionStatus.State
    ACTIVE: InjectionStatus.State
    RECOVERED: InjectionStatus.State
    INJECTION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    injection_id: str
    container_id: str
    pid: int
    state: InjectionStatus.State
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, injection_id: _Optional[str] = ..., container_id: _Optional[str] = ..., pid: _Optional[int] = ..., state: _Optional[_Union[InjectionStatus.State, str]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ExecHelloWorldRequest(_message.Message):
    __slots__ = ("container_id", "injection", "source")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    INJECTION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    injection: Injection
    source: ProcessListSource
    def __init__(self, container_id: _Optional[str] = ..., injection: _Optional[_Union[Injection, _Mapping]] = ..., source: _Optional[_Union[ProcessListSource, str]] = ...) -> None: ...

class Process(_message.Message):
    __slots__ = ("pid", "user", "command")
    PID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    pid: int
    user: str
    command: str
    def __init__(self, pid: _Optional[int] = ..., user: _Optional[str] = ..., command: _Optional[str] = ...) -> None: ...

class ExecHelloWorldResponse(_message.Message):
    __slots__ = ("status", "output", "processes", "truncated")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    status: InjectionStatus
    output: str
    processes: _containers.RepeatedCompositeFieldContainer[Process]
    truncated: bool
    def __init__(self, status: _Optional[_Union[InjectionStatus, _Mapping]] = ..., output: _Optional[str] = ..., processes: _Optional[_Iterable[_Union[Process, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

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
    __slots__ = ("id", "lease", "owner")
    ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    id: str
    lease: _duration_pb2.Duration
    owner: str
    def __init__(self, id: _Optional[str] = ..., lease: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., owner: _Optional[str] = ...) -> None: ...

class InjectionStatus(_message.Message):
    __slots__ = ("injection_id", "container_id", "pid", "state", "expires_at", "kind", "applied_at", "ended_at", "detail", "owner", "mechanism", "cgroup")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[InjectionStatus.State]
        ONE_SHOT: _ClassVar[InjectionStatus.State]
        ACTIVE: _ClassVar[InjectionStatus.State]
        RECOVERED: _ClassVar[InjectionStatus.State]
        EXPIRED: _ClassVar[InjectionStatus.State]
        FAILED: _ClassVar[InjectionStatus.State]
        UNKNOWN_INJECTION: _ClassVar[InjectionStatus.State]
    STATE_UNSPECIFIED: InjectionStatus.State
    ONE_SHOT: InjectionStatus.State
    ACTIVE: InjectionStatus.State
    RECOVERED: InjectionStatus.State
    EXPIRED: InjectionStatus.State
    FAILED: InjectionStatus.State
    UNKNOWN_INJECTION: InjectionStatus.State
    INJECTION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    APPLIED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    injection_id: str
    container_id: str
    pid: int
    state: InjectionStatus.State
    expires_at: _timestamp_pb2.Timestamp
    kind: str
    applied_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    detail: str
    owner: str
    mechanism: str
    cgroup: str
    def __init__(self, injection_id: _Optional[str] = ..., container_id: _Optional[str] = ..., pid: _Optional[int] = ..., state: _Optional[_Union[InjectionStatus.State, str]] = ..., expires_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[str] = ..., applied_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., detail: _Optional[str] = ..., owner: _Optional[str] = ..., mechanism: _Optional[str] = ..., cgroup: _Optional[str] = ...) -> None: ...

class HelloWorld(_message.Message):
    __slots__ = ("source",)
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    source: ProcessListSource
    def __init__(self, source: _Optional[_Union[ProcessListSource, str]] = ...) -> None: ...

class ContainerKill(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ContainerPause(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProcessKill(_message.Message):
    __slots__ = ("process", "signal")
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    process: str
    signal: int
    def __init__(self, process: _Optional[str] = ..., signal: _Optional[int] = ...) -> None: ...

class Stress(_message.Message):
    __slots__ = ("cpu", "memory")
    class Cpu(_message.Message):
        __slots__ = ("workers", "load", "options")
        WORKERS_FIELD_NUMBER: _ClassVar[int]
        LOAD_FIELD_NUMBER: _ClassVar[int]
        OPTIONS_FIELD_NUMBER: _ClassVar[int]
        workers: int
        load: int
        options: _containers.RepeatedScalarFieldContainer[str]
        def __init__(self, workers: _Optional[int] = ..., load: _Optional[int] = ..., options: _Optional[_Iterable[str]] = ...) -> None: ...
    class Memory(_message.Message):
        __slots__ = ("workers", "size", "options", "oom_score_adj")
        WORKERS_FIELD_NUMBER: _ClassVar[int]
        SIZE_FIELD_NUMBER: _ClassVar[int]
        OPTIONS_FIELD_NUMBER: _ClassVar[int]
        OOM_SCORE_ADJ_FIELD_NUMBER: _ClassVar[int]
        workers: int
        size: str
        options: _containers.RepeatedScalarFieldContainer[str]
        oom_score_adj: int
        def __init__(self, workers: _Optional[int] = ..., size: _Optional[str] = ..., options: _Optional[_Iterable[str]] = ..., oom_score_adj: _Optional[int] = ...) -> None: ...
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    cpu: Stress.Cpu
    memory: Stress.Memory
    def __init__(self, cpu: _Optional[_Union[Stress.Cpu, _Mapping]] = ..., memory: _Optional[_Union[Stress.Memory, _Mapping]] = ...) -> None: ...

class NetworkScope(_message.Message):
    __slots__ = ("device", "direction", "peers", "peer_container_ids", "seed")
    class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        DIRECTION_TO: _ClassVar[NetworkScope.Direction]
        DIRECTION_FROM: _ClassVar[NetworkScope.Direction]
        DIRECTION_BOTH: _ClassVar[NetworkScope.Direction]
    DIRECTION_TO: NetworkScope.Direction
    DIRECTION_FROM: NetworkScope.Direction
    DIRECTION_BOTH: NetworkScope.Direction
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    PEER_CONTAINER_IDS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    device: str
    direction: NetworkScope.Direction
    peers: _containers.RepeatedScalarFieldContainer[str]
    peer_container_ids: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    def __init__(self, device: _Optional[str] = ..., direction: _Optional[_Union[NetworkScope.Direction, str]] = ..., peers: _Optional[_Iterable[str]] = ..., peer_container_ids: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ...) -> None: ...

class NetworkPartition(_message.Message):
    __slots__ = ("scope",)
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    scope: NetworkScope
    def __init__(self, scope: _Optional[_Union[NetworkScope, _Mapping]] = ...) -> None: ...

class NetworkLoss(_message.Message):
    __slots__ = ("scope", "loss", "correlation")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_FIELD_NUMBER: _ClassVar[int]
    scope: NetworkScope
    loss: float
    correlation: float
    def __init__(self, scope: _Optional[_Union[NetworkScope, _Mapping]] = ..., loss: _Optional[float] = ..., correlation: _Optional[float] = ...) -> None: ...

class NetworkDelay(_message.Message):
    __slots__ = ("scope", "latency", "jitter", "correlation", "reorder")
    class Reorder(_message.Message):
        __slots__ = ("reorder", "correlation", "gap")
        REORDER_FIELD_NUMBER: _ClassVar[int]
        CORRELATION_FIELD_NUMBER: _ClassVar[int]
        GAP_FIELD_NUMBER: _ClassVar[int]
        reorder: float
        correlation: float
        gap: int
        def __init__(self, reorder: _Optional[float] = ..., correlation: _Optional[float] = ..., gap: _Optional[int] = ...) -> None: ...
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    JITTER_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_FIELD_NUMBER: _ClassVar[int]
    REORDER_FIELD_NUMBER: _ClassVar[int]
    scope: NetworkScope
    latency: _duration_pb2.Duration
    jitter: _duration_pb2.Duration
    correlation: float
    reorder: NetworkDelay.Reorder
    def __init__(self, scope: _Optional[_Union[NetworkScope, _Mapping]] = ..., latency: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., jitter: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., correlation: _Optional[float] = ..., reorder: _Optional[_Union[NetworkDelay.Reorder, _Mapping]] = ...) -> None: ...

class NetworkNetem(_message.Message):
    __slots__ = ("scope", "delay", "loss", "duplicate", "corrupt")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    DELAY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    CORRUPT_FIELD_NUMBER: _ClassVar[int]
    scope: NetworkScope
    delay: NetworkDelay
    loss: NetworkLoss
    duplicate: NetworkDuplicate
    corrupt: NetworkCorrupt
    def __init__(self, scope: _Optional[_Union[NetworkScope, _Mapping]] = ..., delay: _Optional[_Union[NetworkDelay, _Mapping]] = ..., loss: _Optional[_Union[NetworkLoss, _Mapping]] = ..., duplicate: _Optional[_Union[NetworkDuplicate, _Mapping]] = ..., corrupt: _Optional[_Union[NetworkCorrupt, _Mapping]] = ...) -> None: ...

class NetworkDuplicate(_message.Message):
    __slots__ = ("scope", "duplicate", "correlation")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_FIELD_NUMBER: _ClassVar[int]
    scope: NetworkScope
    duplicate: float
    correlation: float
    def __init__(self, scope: _Optional[_Union[NetworkScope, _Mapping]] = ..., duplicate: _Optional[float] = ..., correlation: _Optional[float] = ...) -> None: ...

class NetworkCorrupt(_message.Message):
    __slots__ = ("scope", "corrupt", "correlation")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    CORRUPT_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_FIELD_NUMBER: _ClassVar[int]
    scope: NetworkScope
    corrupt: float
    correlation: float
    def __init__(self, scope: _Optional[_Union[NetworkScope, _Mapping]] = ..., corrupt: _Optional[float] = ..., correlation: _Optional[float] = ...) -> None: ...

class NetworkBandwidth(_message.Message):
    __slots__ = ("scope", "rate", "limit", "buffer", "peakrate", "minburst")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    PEAKRATE_FIELD_NUMBER: _ClassVar[int]
    MINBURST_FIELD_NUMBER: _ClassVar[int]
    scope: NetworkScope
    rate: int
    limit: int
    buffer: int
    peakrate: int
    minburst: int
    def __init__(self, scope: _Optional[_Union[NetworkScope, _Mapping]] = ..., rate: _Optional[int] = ..., limit: _Optional[int] = ..., buffer: _Optional[int] = ..., peakrate: _Optional[int] = ..., minburst: _Optional[int] = ...) -> None: ...

class Dns(_message.Message):
    __slots__ = ("action", "patterns")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_ERROR: _ClassVar[Dns.Action]
        ACTION_RANDOM: _ClassVar[Dns.Action]
    ACTION_ERROR: Dns.Action
    ACTION_RANDOM: Dns.Action
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    action: Dns.Action
    patterns: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, action: _Optional[_Union[Dns.Action, str]] = ..., patterns: _Optional[_Iterable[str]] = ...) -> None: ...

class Time(_message.Message):
    __slots__ = ("time_offset", "clock_ids")
    TIME_OFFSET_FIELD_NUMBER: _ClassVar[int]
    CLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    time_offset: _duration_pb2.Duration
    clock_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, time_offset: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., clock_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class TcpToxic(_message.Message):
    __slots__ = ("port", "stream", "toxicity", "seed", "latency", "bandwidth", "slow_close", "timeout", "reset_peer", "slicer", "limit_data", "down")
    class Stream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STREAM_DOWNSTREAM: _ClassVar[TcpToxic.Stream]
        STREAM_UPSTREAM: _ClassVar[TcpToxic.Stream]
    STREAM_DOWNSTREAM: TcpToxic.Stream
    STREAM_UPSTREAM: TcpToxic.Stream
    class Latency(_message.Message):
        __slots__ = ("latency", "jitter")
        LATENCY_FIELD_NUMBER: _ClassVar[int]
        JITTER_FIELD_NUMBER: _ClassVar[int]
        latency: int
        jitter: int
        def __init__(self, latency: _Optional[int] = ..., jitter: _Optional[int] = ...) -> None: ...
    class Bandwidth(_message.Message):
        __slots__ = ("rate",)
        RATE_FIELD_NUMBER: _ClassVar[int]
        rate: int
        def __init__(self, rate: _Optional[int] = ...) -> None: ...
    class SlowClose(_message.Message):
        __slots__ = ("delay",)
        DELAY_FIELD_NUMBER: _ClassVar[int]
        delay: int
        def __init__(self, delay: _Optional[int] = ...) -> None: ...
    class Timeout(_message.Message):
        __slots__ = ("timeout",)
        TIMEOUT_FIELD_NUMBER: _ClassVar[int]
        timeout: int
        def __init__(self, timeout: _Optional[int] = ...) -> None: ...
    class ResetPeer(_message.Message):
        __slots__ = ("timeout",)
        TIMEOUT_FIELD_NUMBER: _ClassVar[int]
        timeout: int
        def __init__(self, timeout: _Optional[int] = ...) -> None: ...
    class Slicer(_message.Message):
        __slots__ = ("average_size", "size_variation", "delay")
        AVERAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
        SIZE_VARIATION_FIELD_NUMBER: _ClassVar[int]
        DELAY_FIELD_NUMBER: _ClassVar[int]
        average_size: int
        size_variation: int
        delay: int
        def __init__(self, average_size: _Optional[int] = ..., size_variation: _Optional[int] = ..., delay: _Optional[int] = ...) -> None: ...
    class LimitData(_message.Message):
        __slots__ = ("bytes",)
        BYTES_FIELD_NUMBER: _ClassVar[int]
        bytes: int
        def __init__(self, bytes: _Optional[int] = ...) -> None: ...
    class Down(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    PORT_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TOXICITY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_FIELD_NUMBER: _ClassVar[int]
    SLOW_CLOSE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RESET_PEER_FIELD_NUMBER: _ClassVar[int]
    SLICER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_DATA_FIELD_NUMBER: _ClassVar[int]
    DOWN_FIELD_NUMBER: _ClassVar[int]
    port: int
    stream: TcpToxic.Stream
    toxicity: float
    seed: int
    latency: TcpToxic.Latency
    bandwidth: TcpToxic.Bandwidth
    slow_close: TcpToxic.SlowClose
    timeout: TcpToxic.Timeout
    reset_peer: TcpToxic.ResetPeer
    slicer: TcpToxic.Slicer
    limit_data: TcpToxic.LimitData
    down: TcpToxic.Down
    def __init__(self, port: _Optional[int] = ..., stream: _Optional[_Union[TcpToxic.Stream, str]] = ..., toxicity: _Optional[float] = ..., seed: _Optional[int] = ..., latency: _Optional[_Union[TcpToxic.Latency, _Mapping]] = ..., bandwidth: _Optional[_Union[TcpToxic.Bandwidth, _Mapping]] = ..., slow_close: _Optional[_Union[TcpToxic.SlowClose, _Mapping]] = ..., timeout: _Optional[_Union[TcpToxic.Timeout, _Mapping]] = ..., reset_peer: _Optional[_Union[TcpToxic.ResetPeer, _Mapping]] = ..., slicer: _Optional[_Union[TcpToxic.Slicer, _Mapping]] = ..., limit_data: _Optional[_Union[TcpToxic.LimitData, _Mapping]] = ..., down: _Optional[_Union[TcpToxic.Down, _Mapping]] = ...) -> None: ...

class HttpPair(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class HttpReplace(_message.Message):
    __slots__ = ("path", "method", "code", "body", "queries", "headers")
    PATH_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    path: str
    method: str
    code: int
    body: bytes
    queries: _containers.RepeatedCompositeFieldContainer[HttpPair]
    headers: _containers.RepeatedCompositeFieldContainer[HttpPair]
    def __init__(self, path: _Optional[str] = ..., method: _Optional[str] = ..., code: _Optional[int] = ..., body: _Optional[bytes] = ..., queries: _Optional[_Iterable[_Union[HttpPair, _Mapping]]] = ..., headers: _Optional[_Iterable[_Union[HttpPair, _Mapping]]] = ...) -> None: ...

class HttpPatch(_message.Message):
    __slots__ = ("body_json", "queries", "headers")
    BODY_JSON_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    body_json: str
    queries: _containers.RepeatedCompositeFieldContainer[HttpPair]
    headers: _containers.RepeatedCompositeFieldContainer[HttpPair]
    def __init__(self, body_json: _Optional[str] = ..., queries: _Optional[_Iterable[_Union[HttpPair, _Mapping]]] = ..., headers: _Optional[_Iterable[_Union[HttpPair, _Mapping]]] = ...) -> None: ...

class Http(_message.Message):
    __slots__ = ("target", "port", "path", "method", "code", "request_headers", "response_headers", "abort", "delay", "replace", "patch", "side", "kind")
    class Target(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TARGET_REQUEST: _ClassVar[Http.Target]
        TARGET_RESPONSE: _ClassVar[Http.Target]
    TARGET_REQUEST: Http.Target
    TARGET_RESPONSE: Http.Target
    class Side(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SIDE_SERVER: _ClassVar[Http.Side]
        SIDE_CLIENT: _ClassVar[Http.Side]
    SIDE_SERVER: Http.Side
    SIDE_CLIENT: Http.Side
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_ABORT: _ClassVar[Http.Kind]
        KIND_DELAY: _ClassVar[Http.Kind]
        KIND_REPLACE: _ClassVar[Http.Kind]
        KIND_PATCH: _ClassVar[Http.Kind]
    KIND_ABORT: Http.Kind
    KIND_DELAY: Http.Kind
    KIND_REPLACE: Http.Kind
    KIND_PATCH: Http.Kind
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_HEADERS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_HEADERS_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    DELAY_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    PATCH_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    target: Http.Target
    port: int
    path: str
    method: str
    code: int
    request_headers: _containers.RepeatedCompositeFieldContainer[HttpPair]
    response_headers: _containers.RepeatedCompositeFieldContainer[HttpPair]
    abort: bool
    delay: _duration_pb2.Duration
    replace: HttpReplace
    patch: HttpPatch
    side: Http.Side
    kind: Http.Kind
    def __init__(self, target: _Optional[_Union[Http.Target, str]] = ..., port: _Optional[int] = ..., path: _Optional[str] = ..., method: _Optional[str] = ..., code: _Optional[int] = ..., request_headers: _Optional[_Iterable[_Union[HttpPair, _Mapping]]] = ..., response_headers: _Optional[_Iterable[_Union[HttpPair, _Mapping]]] = ..., abort: bool = ..., delay: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., replace: _Optional[_Union[HttpReplace, _Mapping]] = ..., patch: _Optional[_Union[HttpPatch, _Mapping]] = ..., side: _Optional[_Union[Http.Side, str]] = ..., kind: _Optional[_Union[Http.Kind, str]] = ...) -> None: ...

class ApplyRequest(_message.Message):
    __slots__ = ("container_id", "injection", "duration", "container_kill", "container_pause", "process_kill", "stress", "network_partition", "network_loss", "network_delay", "network_duplicate", "network_corrupt", "network_bandwidth", "dns", "hello_world", "tcp_toxic", "http", "time", "network_netem")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    INJECTION_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_KILL_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_PAUSE_FIELD_NUMBER: _ClassVar[int]
    PROCESS_KILL_FIELD_NUMBER: _ClassVar[int]
    STRESS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_PARTITION_FIELD_NUMBER: _ClassVar[int]
    NETWORK_LOSS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_DELAY_FIELD_NUMBER: _ClassVar[int]
    NETWORK_DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_CORRUPT_FIELD_NUMBER: _ClassVar[int]
    NETWORK_BANDWIDTH_FIELD_NUMBER: _ClassVar[int]
    DNS_FIELD_NUMBER: _ClassVar[int]
    HELLO_WORLD_FIELD_NUMBER: _ClassVar[int]
    TCP_TOXIC_FIELD_NUMBER: _ClassVar[int]
    HTTP_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_NETEM_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    injection: Injection
    duration: _duration_pb2.Duration
    container_kill: ContainerKill
    container_pause: ContainerPause
    process_kill: ProcessKill
    stress: Stress
    network_partition: NetworkPartition
    network_loss: NetworkLoss
    network_delay: NetworkDelay
    network_duplicate: NetworkDuplicate
    network_corrupt: NetworkCorrupt
    network_bandwidth: NetworkBandwidth
    dns: Dns
    hello_world: HelloWorld
    tcp_toxic: TcpToxic
    http: Http
    time: Time
    network_netem: NetworkNetem
    def __init__(self, container_id: _Optional[str] = ..., injection: _Optional[_Union[Injection, _Mapping]] = ..., duration: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., container_kill: _Optional[_Union[ContainerKill, _Mapping]] = ..., container_pause: _Optional[_Union[ContainerPause, _Mapping]] = ..., process_kill: _Optional[_Union[ProcessKill, _Mapping]] = ..., stress: _Optional[_Union[Stress, _Mapping]] = ..., network_partition: _Optional[_Union[NetworkPartition, _Mapping]] = ..., network_loss: _Optional[_Union[NetworkLoss, _Mapping]] = ..., network_delay: _Optional[_Union[NetworkDelay, _Mapping]] = ..., network_duplicate: _Optional[_Union[NetworkDuplicate, _Mapping]] = ..., network_corrupt: _Optional[_Union[NetworkCorrupt, _Mapping]] = ..., network_bandwidth: _Optional[_Union[NetworkBandwidth, _Mapping]] = ..., dns: _Optional[_Union[Dns, _Mapping]] = ..., hello_world: _Optional[_Union[HelloWorld, _Mapping]] = ..., tcp_toxic: _Optional[_Union[TcpToxic, _Mapping]] = ..., http: _Optional[_Union[Http, _Mapping]] = ..., time: _Optional[_Union[Time, _Mapping]] = ..., network_netem: _Optional[_Union[NetworkNetem, _Mapping]] = ...) -> None: ...

class ApplyResponse(_message.Message):
    __slots__ = ("status", "processes", "output", "truncated")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    status: InjectionStatus
    processes: _containers.RepeatedCompositeFieldContainer[Process]
    output: str
    truncated: bool
    def __init__(self, status: _Optional[_Union[InjectionStatus, _Mapping]] = ..., processes: _Optional[_Iterable[_Union[Process, _Mapping]]] = ..., output: _Optional[str] = ..., truncated: bool = ...) -> None: ...

class RecoverRequest(_message.Message):
    __slots__ = ("injection_ids",)
    INJECTION_IDS_FIELD_NUMBER: _ClassVar[int]
    injection_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, injection_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RecoverResponse(_message.Message):
    __slots__ = ("injections",)
    INJECTIONS_FIELD_NUMBER: _ClassVar[int]
    injections: _containers.RepeatedCompositeFieldContainer[InjectionStatus]
    def __init__(self, injections: _Optional[_Iterable[_Union[InjectionStatus, _Mapping]]] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("injection_ids", "lease")
    INJECTION_IDS_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    injection_ids: _containers.RepeatedScalarFieldContainer[str]
    lease: _duration_pb2.Duration
    def __init__(self, injection_ids: _Optional[_Iterable[str]] = ..., lease: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class RenewResponse(_message.Message):
    __slots__ = ("injections",)
    INJECTIONS_FIELD_NUMBER: _ClassVar[int]
    injections: _containers.RepeatedCompositeFieldContainer[InjectionStatus]
    def __init__(self, injections: _Optional[_Iterable[_Union[InjectionStatus, _Mapping]]] = ...) -> None: ...

class ListInjectionsRequest(_message.Message):
    __slots__ = ("include_ended",)
    INCLUDE_ENDED_FIELD_NUMBER: _ClassVar[int]
    include_ended: bool
    def __init__(self, include_ended: bool = ...) -> None: ...

class ListInjectionsResponse(_message.Message):
    __slots__ = ("injections",)
    INJECTIONS_FIELD_NUMBER: _ClassVar[int]
    injections: _containers.RepeatedCompositeFieldContainer[InjectionStatus]
    def __init__(self, injections: _Optional[_Iterable[_Union[InjectionStatus, _Mapping]]] = ...) -> None: ...

class ListContainersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListContainersResponse(_message.Message):
    __slots__ = ("containers", "runtimes")
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    containers: _containers.RepeatedCompositeFieldContainer[RunningContainer]
    runtimes: _containers.RepeatedCompositeFieldContainer[RuntimeListing]
    def __init__(self, containers: _Optional[_Iterable[_Union[RunningContainer, _Mapping]]] = ..., runtimes: _Optional[_Iterable[_Union[RuntimeListing, _Mapping]]] = ...) -> None: ...

class RunningContainer(_message.Message):
    __slots__ = ("container_id", "name", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    name: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, container_id: _Optional[str] = ..., name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RuntimeListing(_message.Message):
    __slots__ = ("runtime", "endpoint", "reachable", "error")
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    runtime: str
    endpoint: str
    reachable: bool
    error: str
    def __init__(self, runtime: _Optional[str] = ..., endpoint: _Optional[str] = ..., reachable: bool = ..., error: _Optional[str] = ...) -> None: ...

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
    def __init__(self, status: _Optional[_Union[InjectionStatus, _Mapping]] = ..., output: _Optional[str] = ..., processes: _Optional[_Iterable[_Union[Process, _Mapping]]] = ..., truncated: bool = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KindInfo(_message.Message):
    __slots__ = ("kind", "field", "fields", "mechanisms", "recoverable")
    KIND_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    MECHANISMS_FIELD_NUMBER: _ClassVar[int]
    RECOVERABLE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    field: str
    fields: _containers.RepeatedScalarFieldContainer[str]
    mechanisms: _containers.RepeatedScalarFieldContainer[str]
    recoverable: bool
    def __init__(self, kind: _Optional[str] = ..., field: _Optional[str] = ..., fields: _Optional[_Iterable[str]] = ..., mechanisms: _Optional[_Iterable[str]] = ..., recoverable: bool = ...) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("version", "kinds", "apply_fields", "runtimes", "cgroup", "netem", "netem_missing", "kernel", "pid_targets")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    APPLY_FIELDS_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    NETEM_FIELD_NUMBER: _ClassVar[int]
    NETEM_MISSING_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    PID_TARGETS_FIELD_NUMBER: _ClassVar[int]
    version: str
    kinds: _containers.RepeatedCompositeFieldContainer[KindInfo]
    apply_fields: _containers.RepeatedScalarFieldContainer[str]
    runtimes: _containers.RepeatedCompositeFieldContainer[RuntimeListing]
    cgroup: str
    netem: bool
    netem_missing: str
    kernel: str
    pid_targets: bool
    def __init__(self, version: _Optional[str] = ..., kinds: _Optional[_Iterable[_Union[KindInfo, _Mapping]]] = ..., apply_fields: _Optional[_Iterable[str]] = ..., runtimes: _Optional[_Iterable[_Union[RuntimeListing, _Mapping]]] = ..., cgroup: _Optional[str] = ..., netem: bool = ..., netem_missing: _Optional[str] = ..., kernel: _Optional[str] = ..., pid_targets: bool = ...) -> None: ...

import datetime

from ghibli_anim.contracts.pb import types_pb2 as _types_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_JOB_CREATED: _ClassVar[EventType]
    EVENT_TYPE_JOB_PLANNED: _ClassVar[EventType]
    EVENT_TYPE_JOB_ASSEMBLED: _ClassVar[EventType]
    EVENT_TYPE_JOB_COMPLETED: _ClassVar[EventType]
    EVENT_TYPE_JOB_FAILED: _ClassVar[EventType]
    EVENT_TYPE_JOB_CANCELLED: _ClassVar[EventType]
    EVENT_TYPE_FRAME_STARTED: _ClassVar[EventType]
    EVENT_TYPE_FRAME_PROGRESS: _ClassVar[EventType]
    EVENT_TYPE_FRAME_RENDERED: _ClassVar[EventType]
    EVENT_TYPE_FRAME_FAILED: _ClassVar[EventType]
    EVENT_TYPE_DEPTH_READY: _ClassVar[EventType]
    EVENT_TYPE_DEPTH_FAILED: _ClassVar[EventType]
    EVENT_TYPE_PLAN_FAILED: _ClassVar[EventType]
    EVENT_TYPE_ASSEMBLY_FAILED: _ClassVar[EventType]
    EVENT_TYPE_WATCH_HEARTBEAT: _ClassVar[EventType]
    EVENT_TYPE_JOB_APPROVED: _ClassVar[EventType]
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_JOB_CREATED: EventType
EVENT_TYPE_JOB_PLANNED: EventType
EVENT_TYPE_JOB_ASSEMBLED: EventType
EVENT_TYPE_JOB_COMPLETED: EventType
EVENT_TYPE_JOB_FAILED: EventType
EVENT_TYPE_JOB_CANCELLED: EventType
EVENT_TYPE_FRAME_STARTED: EventType
EVENT_TYPE_FRAME_PROGRESS: EventType
EVENT_TYPE_FRAME_RENDERED: EventType
EVENT_TYPE_FRAME_FAILED: EventType
EVENT_TYPE_DEPTH_READY: EventType
EVENT_TYPE_DEPTH_FAILED: EventType
EVENT_TYPE_PLAN_FAILED: EventType
EVENT_TYPE_ASSEMBLY_FAILED: EventType
EVENT_TYPE_WATCH_HEARTBEAT: EventType
EVENT_TYPE_JOB_APPROVED: EventType

class PlanWork(_message.Message):
    __slots__ = ("job_id", "attempt", "causation_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CAUSATION_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    causation_id: str
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., causation_id: _Optional[str] = ...) -> None: ...

class RenderWork(_message.Message):
    __slots__ = ("job_id", "frame", "attempt", "causation_id", "spec", "depth_output_key")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CAUSATION_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    DEPTH_OUTPUT_KEY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    frame: int
    attempt: int
    causation_id: str
    spec: _types_pb2.FrameSpec
    depth_output_key: str
    def __init__(self, job_id: _Optional[str] = ..., frame: _Optional[int] = ..., attempt: _Optional[int] = ..., causation_id: _Optional[str] = ..., spec: _Optional[_Union[_types_pb2.FrameSpec, _Mapping]] = ..., depth_output_key: _Optional[str] = ...) -> None: ...

class DepthWork(_message.Message):
    __slots__ = ("job_id", "frame", "attempt", "causation_id", "image_key", "output_key", "profile")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CAUSATION_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_KEY_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_KEY_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    frame: int
    attempt: int
    causation_id: str
    image_key: str
    output_key: str
    profile: _types_pb2.Profile
    def __init__(self, job_id: _Optional[str] = ..., frame: _Optional[int] = ..., attempt: _Optional[int] = ..., causation_id: _Optional[str] = ..., image_key: _Optional[str] = ..., output_key: _Optional[str] = ..., profile: _Optional[_Union[_types_pb2.Profile, _Mapping]] = ...) -> None: ...

class AssembleWork(_message.Message):
    __slots__ = ("job_id", "attempt", "causation_id", "frame_keys", "depth_keys", "fps", "formats", "prompts", "interpolate")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CAUSATION_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_KEYS_FIELD_NUMBER: _ClassVar[int]
    DEPTH_KEYS_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    INTERPOLATE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    causation_id: str
    frame_keys: _containers.RepeatedScalarFieldContainer[str]
    depth_keys: _containers.RepeatedScalarFieldContainer[str]
    fps: int
    formats: _containers.RepeatedScalarFieldContainer[str]
    prompts: _containers.RepeatedScalarFieldContainer[str]
    interpolate: int
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., causation_id: _Optional[str] = ..., frame_keys: _Optional[_Iterable[str]] = ..., depth_keys: _Optional[_Iterable[str]] = ..., fps: _Optional[int] = ..., formats: _Optional[_Iterable[str]] = ..., prompts: _Optional[_Iterable[str]] = ..., interpolate: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("event_id", "type", "job_id", "frame", "attempt", "causation_id", "time", "sequence", "reason", "key", "step", "steps", "service", "retryable", "outputs", "depth_key")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CAUSATION_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    DEPTH_KEY_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: EventType
    job_id: str
    frame: int
    attempt: int
    causation_id: str
    time: _timestamp_pb2.Timestamp
    sequence: int
    reason: str
    key: str
    step: int
    steps: int
    service: str
    retryable: bool
    outputs: _containers.RepeatedCompositeFieldContainer[_types_pb2.OutputFile]
    depth_key: str
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[_Union[EventType, str]] = ..., job_id: _Optional[str] = ..., frame: _Optional[int] = ..., attempt: _Optional[int] = ..., causation_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sequence: _Optional[int] = ..., reason: _Optional[str] = ..., key: _Optional[str] = ..., step: _Optional[int] = ..., steps: _Optional[int] = ..., service: _Optional[str] = ..., retryable: _Optional[bool] = ..., outputs: _Optional[_Iterable[_Union[_types_pb2.OutputFile, _Mapping]]] = ..., depth_key: _Optional[str] = ...) -> None: ...

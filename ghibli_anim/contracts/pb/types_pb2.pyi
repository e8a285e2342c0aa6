from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATUS_UNSPECIFIED: _ClassVar[JobStatus]
    JOB_STATUS_PENDING: _ClassVar[JobStatus]
    JOB_STATUS_PLANNING: _ClassVar[JobStatus]
    JOB_STATUS_RENDERING: _ClassVar[JobStatus]
    JOB_STATUS_ASSEMBLING: _ClassVar[JobStatus]
    JOB_STATUS_COMPLETED: _ClassVar[JobStatus]
    JOB_STATUS_FAILED: _ClassVar[JobStatus]
    JOB_STATUS_CANCELLED: _ClassVar[JobStatus]
    JOB_STATUS_PLANNED: _ClassVar[JobStatus]

class SeedMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEED_MODE_UNSPECIFIED: _ClassVar[SeedMode]
    SEED_MODE_INCREMENT: _ClassVar[SeedMode]
    SEED_MODE_FIXED: _ClassVar[SeedMode]
    SEED_MODE_RANDOM: _ClassVar[SeedMode]

class Continuity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTINUITY_UNSPECIFIED: _ClassVar[Continuity]
    CONTINUITY_CONTINUE: _ClassVar[Continuity]
    CONTINUITY_CUT: _ClassVar[Continuity]
JOB_STATUS_UNSPECIFIED: JobStatus
JOB_STATUS_PENDING: JobStatus
JOB_STATUS_PLANNING: JobStatus
JOB_STATUS_RENDERING: JobStatus
JOB_STATUS_ASSEMBLING: JobStatus
JOB_STATUS_COMPLETED: JobStatus
JOB_STATUS_FAILED: JobStatus
JOB_STATUS_CANCELLED: JobStatus
JOB_STATUS_PLANNED: JobStatus
SEED_MODE_UNSPECIFIED: SeedMode
SEED_MODE_INCREMENT: SeedMode
SEED_MODE_FIXED: SeedMode
SEED_MODE_RANDOM: SeedMode
CONTINUITY_UNSPECIFIED: Continuity
CONTINUITY_CONTINUE: Continuity
CONTINUITY_CUT: Continuity

class CameraMove(_message.Message):
    __slots__ = ("zoom", "pan_x", "pan_y", "rotate")
    ZOOM_FIELD_NUMBER: _ClassVar[int]
    PAN_X_FIELD_NUMBER: _ClassVar[int]
    PAN_Y_FIELD_NUMBER: _ClassVar[int]
    ROTATE_FIELD_NUMBER: _ClassVar[int]
    zoom: float
    pan_x: float
    pan_y: float
    rotate: float
    def __init__(self, zoom: _Optional[float] = ..., pan_x: _Optional[float] = ..., pan_y: _Optional[float] = ..., rotate: _Optional[float] = ...) -> None: ...

class LoraRef(_message.Message):
    __slots__ = ("source", "scale", "weight_name")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_NAME_FIELD_NUMBER: _ClassVar[int]
    source: str
    scale: float
    weight_name: str
    def __init__(self, source: _Optional[str] = ..., scale: _Optional[float] = ..., weight_name: _Optional[str] = ...) -> None: ...

class Profile(_message.Message):
    __slots__ = ("name", "base_model", "loras", "controlnet", "depth_model", "scheduler", "tokenizer", "tiny_autoencoder", "width", "height", "steps", "guidance", "strength", "controlnet_scale", "style", "negative_prompt", "fps")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    LORAS_FIELD_NUMBER: _ClassVar[int]
    CONTROLNET_FIELD_NUMBER: _ClassVar[int]
    DEPTH_MODEL_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    TINY_AUTOENCODER_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    CONTROLNET_SCALE_FIELD_NUMBER: _ClassVar[int]
    STYLE_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    name: str
    base_model: str
    loras: _containers.RepeatedCompositeFieldContainer[LoraRef]
    controlnet: str
    depth_model: str
    scheduler: str
    tokenizer: str
    tiny_autoencoder: str
    width: int
    height: int
    steps: int
    guidance: float
    strength: float
    controlnet_scale: float
    style: str
    negative_prompt: str
    fps: int
    def __init__(self, name: _Optional[str] = ..., base_model: _Optional[str] = ..., loras: _Optional[_Iterable[_Union[LoraRef, _Mapping]]] = ..., controlnet: _Optional[str] = ..., depth_model: _Optional[str] = ..., scheduler: _Optional[str] = ..., tokenizer: _Optional[str] = ..., tiny_autoencoder: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., steps: _Optional[int] = ..., guidance: _Optional[float] = ..., strength: _Optional[float] = ..., controlnet_scale: _Optional[float] = ..., style: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., fps: _Optional[int] = ...) -> None: ...

class FrameSpec(_message.Message):
    __slots__ = ("index", "prompt", "negative_prompt", "seed", "strength", "guidance", "steps", "scheduler", "width", "height", "continuity", "source_key", "depth_key", "controlnet_scale", "camera", "color_reference_key", "profile", "color_coherence", "sharpen", "preset", "truncate_prompt", "blend_prompt", "blend_weight", "init_key")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CONTINUITY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_KEY_FIELD_NUMBER: _ClassVar[int]
    DEPTH_KEY_FIELD_NUMBER: _ClassVar[int]
    CONTROLNET_SCALE_FIELD_NUMBER: _ClassVar[int]
    CAMERA_FIELD_NUMBER: _ClassVar[int]
    COLOR_REFERENCE_KEY_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    COLOR_COHERENCE_FIELD_NUMBER: _ClassVar[int]
    SHARPEN_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    BLEND_PROMPT_FIELD_NUMBER: _ClassVar[int]
    BLEND_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    INIT_KEY_FIELD_NUMBER: _ClassVar[int]
    index: int
    prompt: str
    negative_prompt: str
    seed: int
    strength: float
    guidance: float
    steps: int
    scheduler: str
    width: int
    height: int
    continuity: Continuity
    source_key: str
    depth_key: str
    controlnet_scale: float
    camera: CameraMove
    color_reference_key: str
    profile: Profile
    color_coherence: str
    sharpen: float
    preset: str
    truncate_prompt: bool
    blend_prompt: str
    blend_weight: float
    init_key: str
    def __init__(self, index: _Optional[int] = ..., prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., seed: _Optional[int] = ..., strength: _Optional[float] = ..., guidance: _Optional[float] = ..., steps: _Optional[int] = ..., scheduler: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., continuity: _Optional[_Union[Continuity, str]] = ..., source_key: _Optional[str] = ..., depth_key: _Optional[str] = ..., controlnet_scale: _Optional[float] = ..., camera: _Optional[_Union[CameraMove, _Mapping]] = ..., color_reference_key: _Optional[str] = ..., profile: _Optional[_Union[Profile, _Mapping]] = ..., color_coherence: _Optional[str] = ..., sharpen: _Optional[float] = ..., preset: _Optional[str] = ..., truncate_prompt: _Optional[bool] = ..., blend_prompt: _Optional[str] = ..., blend_weight: _Optional[float] = ..., init_key: _Optional[str] = ...) -> None: ...

class FrameState(_message.Message):
    __slots__ = ("index", "rendered", "depth_ready", "rendered_event_id", "depth_event_id", "attempt")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RENDERED_FIELD_NUMBER: _ClassVar[int]
    DEPTH_READY_FIELD_NUMBER: _ClassVar[int]
    RENDERED_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEPTH_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    index: int
    rendered: bool
    depth_ready: bool
    rendered_event_id: str
    depth_event_id: str
    attempt: int
    def __init__(self, index: _Optional[int] = ..., rendered: _Optional[bool] = ..., depth_ready: _Optional[bool] = ..., rendered_event_id: _Optional[str] = ..., depth_event_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class OutputFile(_message.Message):
    __slots__ = ("name", "key", "size_bytes", "sha256", "content_type", "url")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    name: str
    key: str
    size_bytes: int
    sha256: str
    content_type: str
    url: str
    def __init__(self, name: _Optional[str] = ..., key: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., content_type: _Optional[str] = ..., url: _Optional[str] = ...) -> None: ...

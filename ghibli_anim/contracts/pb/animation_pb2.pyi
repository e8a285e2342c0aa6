import datetime

from ghibli_anim.contracts.pb import types_pb2 as _types_pb2
from ghibli_anim.contracts.pb import bus_pb2 as _bus_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateAnimationRequest(_message.Message):
    __slots__ = ("idempotency_key", "idea", "frames", "profile", "seed", "seed_mode", "width", "height", "steps", "guidance", "strength", "negative_prompt", "fps", "formats", "depth", "storyboard_json", "client_id", "loras", "base_model", "controlnet", "init_upload_id", "preset", "truncate_prompts", "color_coherence", "interpolate", "camera", "strength_schedule", "guidance_schedule", "sharpen", "blend_prompts", "seed_mode_schedule", "fork", "review")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    IDEA_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SEED_MODE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    STORYBOARD_JSON_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    LORAS_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    CONTROLNET_FIELD_NUMBER: _ClassVar[int]
    INIT_UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    COLOR_COHERENCE_FIELD_NUMBER: _ClassVar[int]
    INTERPOLATE_FIELD_NUMBER: _ClassVar[int]
    CAMERA_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    SHARPEN_FIELD_NUMBER: _ClassVar[int]
    BLEND_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    SEED_MODE_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    FORK_FIELD_NUMBER: _ClassVar[int]
    REVIEW_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    idea: str
    frames: int
    profile: str
    seed: int
    seed_mode: _types_pb2.SeedMode
    width: int
    height: int
    steps: int
    guidance: float
    strength: float
    negative_prompt: str
    fps: int
    formats: _containers.RepeatedScalarFieldContainer[str]
    depth: bool
    storyboard_json: str
    client_id: str
    loras: _containers.RepeatedScalarFieldContainer[str]
    base_model: str
    controlnet: str
    init_upload_id: str
    preset: str
    truncate_prompts: bool
    color_coherence: str
    interpolate: int
    camera: str
    strength_schedule: str
    guidance_schedule: str
    sharpen: str
    blend_prompts: bool
    seed_mode_schedule: str
    fork: ForkFrom
    review: bool
    def __init__(self, idempotency_key: _Optional[str] = ..., idea: _Optional[str] = ..., frames: _Optional[int] = ..., profile: _Optional[str] = ..., seed: _Optional[int] = ..., seed_mode: _Optional[_Union[_types_pb2.SeedMode, str]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., steps: _Optional[int] = ..., guidance: _Optional[float] = ..., strength: _Optional[float] = ..., negative_prompt: _Optional[str] = ..., fps: _Optional[int] = ..., formats: _Optional[_Iterable[str]] = ..., depth: _Optional[bool] = ..., storyboard_json: _Optional[str] = ..., client_id: _Optional[str] = ..., loras: _Optional[_Iterable[str]] = ..., base_model: _Optional[str] = ..., controlnet: _Optional[str] = ..., init_upload_id: _Optional[str] = ..., preset: _Optional[str] = ..., truncate_prompts: _Optional[bool] = ..., color_coherence: _Optional[str] = ..., interpolate: _Optional[int] = ..., camera: _Optional[str] = ..., strength_schedule: _Optional[str] = ..., guidance_schedule: _Optional[str] = ..., sharpen: _Optional[str] = ..., blend_prompts: _Optional[bool] = ..., seed_mode_schedule: _Optional[str] = ..., fork: _Optional[_Union[ForkFrom, _Mapping]] = ..., review: _Optional[bool] = ...) -> None: ...

class ForkFrom(_message.Message):
    __slots__ = ("parent_job_id", "from_frame")
    PARENT_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_FRAME_FIELD_NUMBER: _ClassVar[int]
    parent_job_id: str
    from_frame: int
    def __init__(self, parent_job_id: _Optional[str] = ..., from_frame: _Optional[int] = ...) -> None: ...

class CreateAnimationResponse(_message.Message):
    __slots__ = ("job_id", "existing", "animation")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EXISTING_FIELD_NUMBER: _ClassVar[int]
    ANIMATION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    existing: bool
    animation: Animation
    def __init__(self, job_id: _Optional[str] = ..., existing: _Optional[bool] = ..., animation: _Optional[_Union[Animation, _Mapping]] = ...) -> None: ...

class Animation(_message.Message):
    __slots__ = ("job_id", "status", "frames_total", "frames_done", "error", "seed", "attempt", "title", "storyboard_json", "planner_backend", "outputs", "frame_files", "created_at", "updated_at", "profile", "idea", "fork")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FRAMES_DONE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    STORYBOARD_JSON_FIELD_NUMBER: _ClassVar[int]
    PLANNER_BACKEND_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    FRAME_FILES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    IDEA_FIELD_NUMBER: _ClassVar[int]
    FORK_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    status: _types_pb2.JobStatus
    frames_total: int
    frames_done: int
    error: str
    seed: int
    attempt: int
    title: str
    storyboard_json: str
    planner_backend: str
    outputs: _containers.RepeatedCompositeFieldContainer[_types_pb2.OutputFile]
    frame_files: _containers.RepeatedCompositeFieldContainer[_types_pb2.OutputFile]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    profile: str
    idea: str
    fork: ForkFrom
    def __init__(self, job_id: _Optional[str] = ..., status: _Optional[_Union[_types_pb2.JobStatus, str]] = ..., frames_total: _Optional[int] = ..., frames_done: _Optional[int] = ..., error: _Optional[str] = ..., seed: _Optional[int] = ..., attempt: _Optional[int] = ..., title: _Optional[str] = ..., storyboard_json: _Optional[str] = ..., planner_backend: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[_types_pb2.OutputFile, _Mapping]]] = ..., frame_files: _Optional[_Iterable[_Union[_types_pb2.OutputFile, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., profile: _Optional[str] = ..., idea: _Optional[str] = ..., fork: _Optional[_Union[ForkFrom, _Mapping]] = ...) -> None: ...

class GetAnimationRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchAnimationRequest(_message.Message):
    __slots__ = ("job_id", "after_sequence")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_sequence: int
    def __init__(self, job_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class CancelAnimationRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ResumeAnimationRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListAnimationsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "status", "client_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    status: _types_pb2.JobStatus
    client_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., status: _Optional[_Union[_types_pb2.JobStatus, str]] = ..., client_id: _Optional[str] = ...) -> None: ...

class ListAnimationsResponse(_message.Message):
    __slots__ = ("animations", "next_page_token")
    ANIMATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    animations: _containers.RepeatedCompositeFieldContainer[Animation]
    next_page_token: str
    def __init__(self, animations: _Optional[_Iterable[_Union[Animation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteAnimationRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DeleteAnimationResponse(_message.Message):
    __slots__ = ("objects_deleted",)
    OBJECTS_DELETED_FIELD_NUMBER: _ClassVar[int]
    objects_deleted: int
    def __init__(self, objects_deleted: _Optional[int] = ...) -> None: ...

class CreateUploadRequest(_message.Message):
    __slots__ = ("content_type", "size_bytes")
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    content_type: str
    size_bytes: int
    def __init__(self, content_type: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class CreateUploadResponse(_message.Message):
    __slots__ = ("upload_id", "key", "put_url", "expires_at")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PUT_URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    key: str
    put_url: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, upload_id: _Optional[str] = ..., key: _Optional[str] = ..., put_url: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ApproveAnimationRequest(_message.Message):
    __slots__ = ("job_id", "storyboard_json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STORYBOARD_JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    storyboard_json: str
    def __init__(self, job_id: _Optional[str] = ..., storyboard_json: _Optional[str] = ...) -> None: ...

class ApproveReply(_message.Message):
    __slots__ = ("animation", "error")
    ANIMATION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    animation: Animation
    error: BusError
    def __init__(self, animation: _Optional[_Union[Animation, _Mapping]] = ..., error: _Optional[_Union[BusError, _Mapping]] = ...) -> None: ...

class CreateReply(_message.Message):
    __slots__ = ("response", "error")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    response: CreateAnimationResponse
    error: BusError
    def __init__(self, response: _Optional[_Union[CreateAnimationResponse, _Mapping]] = ..., error: _Optional[_Union[BusError, _Mapping]] = ...) -> None: ...

class BusError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ForkAnimationRequest(_message.Message):
    __slots__ = ("fork", "storyboard_json", "prompts", "idempotency_key", "client_id", "strength", "strength_schedule", "guidance", "guidance_schedule", "seed", "seed_mode", "seed_mode_schedule", "loras", "color_coherence", "depth", "review")
    FORK_FIELD_NUMBER: _ClassVar[int]
    STORYBOARD_JSON_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SEED_MODE_FIELD_NUMBER: _ClassVar[int]
    SEED_MODE_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    LORAS_FIELD_NUMBER: _ClassVar[int]
    COLOR_COHERENCE_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    REVIEW_FIELD_NUMBER: _ClassVar[int]
    fork: ForkFrom
    storyboard_json: str
    prompts: _containers.RepeatedCompositeFieldContainer[PromptEdit]
    idempotency_key: str
    client_id: str
    strength: float
    strength_schedule: str
    guidance: float
    guidance_schedule: str
    seed: int
    seed_mode: _types_pb2.SeedMode
    seed_mode_schedule: str
    loras: _containers.RepeatedScalarFieldContainer[str]
    color_coherence: str
    depth: bool
    review: bool
    def __init__(self, fork: _Optional[_Union[ForkFrom, _Mapping]] = ..., storyboard_json: _Optional[str] = ..., prompts: _Optional[_Iterable[_Union[PromptEdit, _Mapping]]] = ..., idempotency_key: _Optional[str] = ..., client_id: _Optional[str] = ..., strength: _Optional[float] = ..., strength_schedule: _Optional[str] = ..., guidance: _Optional[float] = ..., guidance_schedule: _Optional[str] = ..., seed: _Optional[int] = ..., seed_mode: _Optional[_Union[_types_pb2.SeedMode, str]] = ..., seed_mode_schedule: _Optional[str] = ..., loras: _Optional[_Iterable[str]] = ..., color_coherence: _Optional[str] = ..., depth: _Optional[bool] = ..., review: _Optional[bool] = ...) -> None: ...

class ExtendAnimationRequest(_message.Message):
    __slots__ = ("parent_job_id", "frames", "storyboard_json", "prompts", "idempotency_key", "client_id", "strength", "strength_schedule", "guidance", "guidance_schedule", "seed", "seed_mode", "seed_mode_schedule", "loras", "color_coherence", "depth", "review")
    PARENT_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    STORYBOARD_JSON_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SEED_MODE_FIELD_NUMBER: _ClassVar[int]
    SEED_MODE_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    LORAS_FIELD_NUMBER: _ClassVar[int]
    COLOR_COHERENCE_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    REVIEW_FIELD_NUMBER: _ClassVar[int]
    parent_job_id: str
    frames: int
    storyboard_json: str
    prompts: _containers.RepeatedCompositeFieldContainer[PromptEdit]
    idempotency_key: str
    client_id: str
    strength: float
    strength_schedule: str
    guidance: float
    guidance_schedule: str
    seed: int
    seed_mode: _types_pb2.SeedMode
    seed_mode_schedule: str
    loras: _containers.RepeatedScalarFieldContainer[str]
    color_coherence: str
    depth: bool
    review: bool
    def __init__(self, parent_job_id: _Optional[str] = ..., frames: _Optional[int] = ..., storyboard_json: _Optional[str] = ..., prompts: _Optional[_Iterable[_Union[PromptEdit, _Mapping]]] = ..., idempotency_key: _Optional[str] = ..., client_id: _Optional[str] = ..., strength: _Optional[float] = ..., strength_schedule: _Optional[str] = ..., guidance: _Optional[float] = ..., guidance_schedule: _Optional[str] = ..., seed: _Optional[int] = ..., seed_mode: _Optional[_Union[_types_pb2.SeedMode, str]] = ..., seed_mode_schedule: _Optional[str] = ..., loras: _Optional[_Iterable[str]] = ..., color_coherence: _Optional[str] = ..., depth: _Optional[bool] = ..., review: _Optional[bool] = ...) -> None: ...

class PromptEdit(_message.Message):
    __slots__ = ("frame", "prompt")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    frame: int
    prompt: str
    def __init__(self, frame: _Optional[int] = ..., prompt: _Optional[str] = ...) -> None: ...

class JobState(_message.Message):
    __slots__ = ("job_id", "status", "request", "seed", "frames", "attempt", "frame_specs", "frame_states", "error", "title", "planner_backend", "profile", "outputs", "created_at", "updated_at", "last_event_id", "list_position", "client_list_position", "approved")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FRAME_SPECS_FIELD_NUMBER: _ClassVar[int]
    FRAME_STATES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    PLANNER_BACKEND_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    LIST_POSITION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_LIST_POSITION_FIELD_NUMBER: _ClassVar[int]
    APPROVED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    status: _types_pb2.JobStatus
    request: CreateAnimationRequest
    seed: int
    frames: int
    attempt: int
    frame_specs: _containers.RepeatedCompositeFieldContainer[_types_pb2.FrameSpec]
    frame_states: _containers.RepeatedCompositeFieldContainer[_types_pb2.FrameState]
    error: str
    title: str
    planner_backend: str
    profile: _types_pb2.Profile
    outputs: _containers.RepeatedCompositeFieldContainer[_types_pb2.OutputFile]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    last_event_id: str
    list_position: int
    client_list_position: int
    approved: bool
    def __init__(self, job_id: _Optional[str] = ..., status: _Optional[_Union[_types_pb2.JobStatus, str]] = ..., request: _Optional[_Union[CreateAnimationRequest, _Mapping]] = ..., seed: _Optional[int] = ..., frames: _Optional[int] = ..., attempt: _Optional[int] = ..., frame_specs: _Optional[_Iterable[_Union[_types_pb2.FrameSpec, _Mapping]]] = ..., frame_states: _Optional[_Iterable[_Union[_types_pb2.FrameState, _Mapping]]] = ..., error: _Optional[str] = ..., title: _Optional[str] = ..., planner_backend: _Optional[str] = ..., profile: _Optional[_Union[_types_pb2.Profile, _Mapping]] = ..., outputs: _Optional[_Iterable[_Union[_types_pb2.OutputFile, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_event_id: _Optional[str] = ..., list_position: _Optional[int] = ..., client_list_position: _Optional[int] = ..., approved: _Optional[bool] = ...) -> None: ...

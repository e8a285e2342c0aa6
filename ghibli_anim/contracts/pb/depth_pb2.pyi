from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class EstimateDepthRequest(_message.Message):
    __slots__ = ("image_key", "output_key", "profile")
    IMAGE_KEY_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_KEY_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    image_key: str
    output_key: str
    profile: str
    def __init__(self, image_key: _Optional[str] = ..., output_key: _Optional[str] = ..., profile: _Optional[str] = ...) -> None: ...

class EstimateDepthResponse(_message.Message):
    __slots__ = ("depth_key", "width", "height")
    DEPTH_KEY_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    depth_key: str
    width: int
    height: int
    def __init__(self, depth_key: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

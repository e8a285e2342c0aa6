"""contracts/pb: the generated gRPC service has every call of the design."""

from __future__ import annotations

from ghibli_anim.contracts.pb import animation_pb2


def test_proto_has_every_rpc_of_the_design():
    service = animation_pb2.DESCRIPTOR.services_by_name["AnimationService"]
    assert set(service.methods_by_name) == {
        "CreateAnimation",
        "GetAnimation",
        "WatchAnimation",
        "CancelAnimation",
        "ResumeAnimation",
        "ListAnimations",
        "DeleteAnimation",
        "CreateUpload",
        "ApproveAnimation",
        "ForkAnimation",
        "ExtendAnimation",
    }
    assert service.methods_by_name["WatchAnimation"].server_streaming

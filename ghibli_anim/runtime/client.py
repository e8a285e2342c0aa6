"""The gRPC client of AnimationService, shared by the CLI, the web page and tests.

``submit --wait`` and the embedded ``generate`` both drive a job through this
code: create, watch the events, then download every file of the job through its
presigned URL, checking size and sha256.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import tempfile
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from ghibli_anim.contracts.pb import animation_pb2, animation_pb2_grpc, bus_pb2, types_pb2
from ghibli_anim.contracts.uploads import read_image_file
from ghibli_anim.runtime import tracing

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_KEEPALIVE_S = 10.0
"""Ping an idle connection this often; a peer that does not answer within as long is dead."""
DEFAULT_WATCH_IDLE_S = 60.0
"""A watch that hears nothing, not even a heartbeat (15 s apart), this long is reopened."""
WATCH_RESUMES = 5
"""Reopenings in a row without hearing from the planner before a watch gives up."""


def channel_keepalive(seconds: float) -> list[tuple[str, int]]:
    """Channel options: ping every ``seconds`` even when no call is active and however long
    no data flows (a quiet watch carries none), and drop the connection when a ping gets
    no answer within ``seconds``: a dead peer is noticed in about twice ``seconds``."""
    ms = max(1000, int(seconds * 1000))
    return [
        ("grpc.keepalive_time_ms", ms),
        ("grpc.keepalive_timeout_ms", ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_time_between_pings_ms", ms),
        # Channels share connections process-wide by default: a channel opened to get
        # away from a silent connection would be handed that same connection.
        ("grpc.use_local_subchannel_pool", 1),
    ]


READS_RETRIED = ("GetAnimation", "ListAnimations")
"""The calls that only read, which the channel tries again on UNAVAILABLE by itself."""
READ_ATTEMPTS = 3
"""Tries of a read in all, within the call's deadline, after pauses of at most 0.25 s and
then 0.5 s (gRPC picks each at random below its bound, so clients spread out): a planner
restarting, or one that cannot reach NATS for a moment (it answers UNAVAILABLE), costs a
read a moment rather than an error. Calls that change a job are not tried again: the first
may have been done, with only its answer lost."""


RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "animation.v1.AnimationService", "method": method}
                    for method in READS_RETRIED
                ],
                "retryPolicy": {
                    "maxAttempts": READ_ATTEMPTS,
                    "initialBackoff": "0.25s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)
"""The channel's gRPC service config: the retry policy of the reads."""


class _Silent(Exception):
    """A watch heard nothing for ``watch_idle_s``."""


# The variables from_env reads the TLS files from: errors name both.
_TLS_VARS = {
    "tls_ca": "ANIM_CLIENT_TLS_CA",
    "tls_cert": "ANIM_CLIENT_TLS_CERT",
    "tls_key": "ANIM_CLIENT_TLS_KEY",
}


class DownloadError(RuntimeError):
    """A downloaded file does not match the size or sha256 the server announced."""


@dataclass
class AnimationClient:
    target: str
    timeout_s: float = DEFAULT_TIMEOUT_S
    token: str = ""  # bearer token when the server requires one
    tls_ca: str = ""  # PEM path: use TLS and trust this CA
    tls_cert: str = ""  # PEM paths of a client certificate (mutual TLS)
    tls_key: str = ""
    keepalive_s: float = DEFAULT_KEEPALIVE_S
    watch_idle_s: float = DEFAULT_WATCH_IDLE_S

    def __post_init__(self) -> None:
        self._open_channel()

    def _open_channel(self) -> None:
        # The caller's span, if any, continues into the planner (and the job's trace).
        interceptors = tracing.grpc_client_interceptors()
        options = [
            *channel_keepalive(self.keepalive_s),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", RETRY_SERVICE_CONFIG),
        ]
        if self.tls_ca or self.tls_cert:

            def read(field: str) -> bytes | None:
                path = getattr(self, field)
                if not path:
                    return None
                try:
                    return Path(path).read_bytes()
                except OSError as exc:
                    raise ValueError(
                        f"{field} ({_TLS_VARS[field]}): cannot read {path} ({exc.strerror or exc})"
                    ) from None

            creds = grpc.ssl_channel_credentials(read("tls_ca"), read("tls_key"), read("tls_cert"))
            self.channel = grpc.aio.secure_channel(
                self.target, creds, options=options, interceptors=interceptors
            )
        else:
            self.channel = grpc.aio.insecure_channel(
                self.target, options=options, interceptors=interceptors
            )
        self.stub = animation_pb2_grpc.AnimationServiceStub(self.channel)

    async def _reconnect(self) -> None:
        """A new channel (a new connection): the old one went silent without failing."""
        old = self.channel
        self._open_channel()
        await old.close(grace=None)

    @classmethod
    def from_env(cls, target: str, **kwargs) -> AnimationClient:
        """A client with the token and TLS files of the ANIM_CLIENT_* variables."""
        from ghibli_anim.contracts import config

        settings = config.load("client")
        return cls(
            target,
            token=settings["ANIM_CLIENT_TOKEN"],
            tls_ca=settings["ANIM_CLIENT_TLS_CA"],
            tls_cert=settings["ANIM_CLIENT_TLS_CERT"],
            tls_key=settings["ANIM_CLIENT_TLS_KEY"],
            **{"keepalive_s": settings["ANIM_GRPC_KEEPALIVE_S"], **kwargs},
        )

    def _metadata(self):
        return (("authorization", f"Bearer {self.token}"),) if self.token else None

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AnimationClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        await asyncio.wait_for(self.channel.channel_ready(), timeout_s)

    async def create(
        self, request: animation_pb2.CreateAnimationRequest
    ) -> animation_pb2.CreateAnimationResponse:
        return await self.stub.CreateAnimation(
            request, timeout=self.timeout_s, metadata=self._metadata()
        )

    async def fork(
        self, request: animation_pb2.ForkAnimationRequest
    ) -> animation_pb2.CreateAnimationResponse:
        return await self.stub.ForkAnimation(
            request, timeout=self.timeout_s, metadata=self._metadata()
        )

    async def extend(
        self, request: animation_pb2.ExtendAnimationRequest
    ) -> animation_pb2.CreateAnimationResponse:
        return await self.stub.ExtendAnimation(
            request, timeout=self.timeout_s, metadata=self._metadata()
        )

    async def get(self, job_id: str) -> animation_pb2.Animation:
        return await self.stub.GetAnimation(
            animation_pb2.GetAnimationRequest(job_id=job_id),
            timeout=self.timeout_s,
            metadata=self._metadata(),
        )

    async def cancel(self, job_id: str) -> animation_pb2.Animation:
        return await self.stub.CancelAnimation(
            animation_pb2.CancelAnimationRequest(job_id=job_id),
            timeout=self.timeout_s,
            metadata=self._metadata(),
        )

    async def approve(self, job_id: str, storyboard_json: str = "") -> animation_pb2.Animation:
        """Start rendering a job waiting for review, as planned or with an edited storyboard."""
        return await self.stub.ApproveAnimation(
            animation_pb2.ApproveAnimationRequest(job_id=job_id, storyboard_json=storyboard_json),
            timeout=self.timeout_s,
            metadata=self._metadata(),
        )

    async def resume(self, job_id: str) -> animation_pb2.Animation:
        return await self.stub.ResumeAnimation(
            animation_pb2.ResumeAnimationRequest(job_id=job_id),
            timeout=self.timeout_s,
            metadata=self._metadata(),
        )

    async def delete(self, job_id: str) -> animation_pb2.DeleteAnimationResponse:
        return await self.stub.DeleteAnimation(
            animation_pb2.DeleteAnimationRequest(job_id=job_id),
            timeout=self.timeout_s,
            metadata=self._metadata(),
        )

    async def list(
        self,
        page_size: int = 50,
        status: int = 0,
        *,
        client_id: str = "",
        limit: int | None = None,
    ) -> list[animation_pb2.Animation]:
        """Jobs newest first (one client's with ``client_id``), page after page until
        the end, or until ``limit`` jobs."""
        out: list[animation_pb2.Animation] = []
        token = ""
        while limit is None or len(out) < limit:
            page = await self.stub.ListAnimations(
                animation_pb2.ListAnimationsRequest(
                    page_size=page_size if limit is None else min(page_size, limit - len(out)),
                    page_token=token,
                    status=status,
                    client_id=client_id,
                ),
                timeout=self.timeout_s,
                metadata=self._metadata(),
            )
            out.extend(page.animations)
            token = page.next_page_token
            if not token:
                break
        return out if limit is None else out[:limit]

    async def watch(
        self, job_id: str, after_sequence: int = 0, timeout_s: float | None = None
    ) -> AsyncIterator[bus_pb2.Event]:
        """Events of a job in order; ends after the job's terminal event.

        Every other call has the client's deadline; a watch lasts as long as its job,
        so it has none unless ``timeout_s`` is given. It is still bounded: the planner
        fails every job that runs past ANIM_JOB_TIMEOUT_S, and that terminal event
        ends the stream.

        A stream that breaks (the connection dropped, or a peer that stopped answering
        keepalive pings) or stays silent for ``watch_idle_s`` (no event, no heartbeat:
        dead somewhere the pings do not reach, such as behind a proxy) is reopened after
        the last event received, so no event is lost or repeated; after
        ``WATCH_RESUMES`` reopenings in a row without hearing from the planner, the
        error rises. Heartbeats are not yielded.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        last, failures = after_sequence, 0
        while True:
            left = None if deadline is None else max(0.001, deadline - loop.time())
            call = self.stub.WatchAnimation(
                animation_pb2.WatchAnimationRequest(job_id=job_id, after_sequence=last),
                timeout=left,
                metadata=self._metadata(),
            )
            try:
                while True:
                    try:
                        event = await asyncio.wait_for(call.read(), self.watch_idle_s)
                    except TimeoutError:
                        raise _Silent from None
                    if event is grpc.aio.EOF:
                        return
                    failures = 0
                    if event.type == bus_pb2.EVENT_TYPE_WATCH_HEARTBEAT:
                        continue
                    last = event.sequence or last
                    yield event
            except (_Silent, grpc.aio.AioRpcError) as exc:
                silent = isinstance(exc, _Silent)
                failures += 1
                if silent and failures > WATCH_RESUMES:
                    raise TimeoutError(
                        f"watch of job {job_id}: nothing heard for {self.watch_idle_s:g} s, "
                        f"{failures} times in a row"
                    ) from None
                if not silent and (
                    exc.code() != grpc.StatusCode.UNAVAILABLE or failures > WATCH_RESUMES
                ):
                    raise
                if silent:
                    # The connection may look alive to the channel (a proxy answers its
                    # pings): the next try goes over a new one.
                    call.cancel()
                    await self._reconnect()
                await asyncio.sleep(min(2.0, 0.1 * 2**failures))
            finally:
                call.cancel()


def _fetch(url: str, dest: Path) -> None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        shutil.copyfile(urllib.request.url2pathname(parsed.path), dest)
        return
    if parsed.scheme not in ("http", "https"):
        raise DownloadError(f"url: unsupported scheme {parsed.scheme!r}")
    with urllib.request.urlopen(url, timeout=60) as response, dest.open("wb") as out:
        shutil.copyfileobj(response, out)


def download_files(files: list[types_pb2.OutputFile], job_id: str, out_dir: Path) -> list[Path]:
    """Download files into ``out_dir`` keeping their path under ``jobs/{id}/``.

    Each file goes to a temporary name first and is renamed once its size and
    sha256 match, so a failed download never leaves a wrong file behind.
    """
    prefix = f"jobs/{job_id}/"
    written = []
    for f in files:
        if not f.key.startswith(prefix) or ".." in f.key:
            raise DownloadError(f"key: {f.key!r} is not a file of job {job_id}")
        dest = out_dir / f.key[len(prefix) :]
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        _fetch(f.url, tmp)
        data = tmp.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if f.sha256 and digest != f.sha256:
            tmp.unlink()
            raise DownloadError(f"{f.name}: sha256 {digest} does not match {f.sha256}")
        if f.size_bytes and len(data) != f.size_bytes:
            tmp.unlink()
            raise DownloadError(f"{f.name}: {len(data)} bytes, expected {f.size_bytes}")
        tmp.replace(dest)
        written.append(dest)
    return written


# ---------------------------------------------------------------------------
# Init images: CreateUpload, then PUT the file to the presigned URL
# ---------------------------------------------------------------------------


def put_presigned(url: str, data: bytes, content_type: str, timeout_s: float = 60.0) -> None:
    """Upload ``data`` to a presigned PUT URL (http(s), or file:// of the local store)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        # The local store's "URL" is the object's path: write beside it, then rename.
        dest = Path(urllib.request.url2pathname(parsed.path))
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"put_url: unsupported scheme {parsed.scheme!r}")
    request = urllib.request.Request(
        url, data=data, method="PUT", headers={"Content-Type": content_type}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        if response.status not in (200, 201, 204):
            raise OSError(f"put_url: the store answered HTTP {response.status}")


async def upload_init_image(client: AnimationClient, path: Path) -> str:
    """CreateUpload, then PUT the file; the upload id for ``init_upload_id``."""
    data, content_type = read_image_file(path)
    resp = await client.stub.CreateUpload(
        animation_pb2.CreateUploadRequest(content_type=content_type, size_bytes=len(data)),
        timeout=client.timeout_s,
        metadata=client._metadata(),
    )
    await asyncio.to_thread(put_presigned, resp.put_url, data, content_type)
    return resp.upload_id

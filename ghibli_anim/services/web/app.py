"""The web page as an ASGI app: submit an idea, watch its frames land, direct the job.

A small Starlette app in front of the planner's gRPC API (``AnimationClient``,
with the ANIM_CLIENT_* bearer token and TLS settings). It keeps no state of its
own: every page and every JSON answer is read from the planner, so any number
of replicas can serve it.

Routes:

- ``GET /``: the submit form (idea, frames, profile, depth, seed, formats) and
  the recent jobs; ``POST /jobs`` submits it and redirects to the job page.
- ``GET /jobs/{id}``: the job page. Its script follows ``GET /jobs/{id}/events``
  (server-sent events relaying WatchAnimation, one JSON event per message, ``id``
  = stream sequence so a reconnect resumes) and re-reads ``GET /api/jobs/{id}``
  when a frame, a depth map or the outputs land.
- ``POST /jobs/{id}/cancel`` and ``/resume``: JSON for scripts (``Accept:
  application/json``), a redirect back to the job page for plain forms.
- Directing a job (plain forms; a refused one comes back with the values as typed
  and the planner's message next to them):
  ``POST /jobs/{id}/approve`` sends the storyboard editor of a job waiting for
  review (ApproveAnimation, with the edited storyboard or none when unchanged);
  ``GET /jobs/{id}?frame=K`` opens frame K of a finished, failed or cancelled job
  for editing, and ``POST /jobs/{id}/fork`` re-renders from it (ForkAnimation:
  the parent's settings, with shot K as edited and the form's seed), then shows the
  new job, whose page plays its parent next to it (the job view names the parent);
  ``POST /jobs/{id}/extend`` extends a finished, failed or cancelled job by M frames
  (ExtendAnimation: every frame kept, the planner continues the storyboard).
- ``GET /api/jobs`` and ``/api/jobs/{id}``: the same data as JSON.
- ``GET /healthz`` (the process answers) and ``/readyz`` (the planner's
  grpc.health.v1 says SERVING).

Images, video and downloads come straight from the store through presigned
URLs: the browser must reach ``ANIM_S3_PUBLIC_ENDPOINT``. A local-folder store's
``file://`` URLs cannot be shown; the page says so.

The page itself has no login: whoever reaches it submits jobs as the web
service's planner client. Publish it behind your own authentication.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import jinja2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ghibli_anim.contracts import keys, limits
from ghibli_anim.contracts.events import event_name
from ghibli_anim.contracts.lifecycle import status_name
from ghibli_anim.runtime.client import AnimationClient
from ghibli_anim.services.web import views

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
RECENT_JOBS = 20
KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
RETRY_MS = 2000  # how soon EventSource reconnects after a dropped stream

# gRPC status -> HTTP status. Credentials the planner refuses are the web
# service's configuration, not the visitor's fault: a gateway error.
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

# Scripts and styles only from this origin; images and video from the store's
# presigned URLs (any http(s) endpoint, as deployments differ).
_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' http: https:; media-src 'self' http: https:; "
        b"script-src 'self'; style-src 'self'; connect-src 'self'; object-src 'none'; "
        b"base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    # Not no-referrer: with it, browsers send `Origin: null` on same-origin form posts.
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]

_END = object()


_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,  # every {{ value }} is HTML-escaped
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(name: str, **context: Any) -> str:
    """The HTML of template ``name`` (autoescaped; ``limits`` is always there)."""
    return _TEMPLATES.get_template(name).render(limits=limits, **context)


def job_html(
    job: dict[str, Any],
    *,
    editor: dict[str, Any] | None = None,
    editor_error: str = "",
    fork: views.ForkForm | None = None,
    fork_error: str = "",
    parent: dict[str, Any] | None = None,
    extend: views.ExtendForm | None = None,
    extend_error: str = "",
) -> str:
    """The job page of ``job`` (a ``views.job_view``), with its directing forms."""
    return render(
        "job.html",
        job=job,
        player=views.player(job),
        editor=editor,
        editor_error=editor_error,
        fork=fork,
        fork_error=fork_error,
        parent=parent,
        extend=extend,
        extend_error=extend_error,
    )


_REQUESTS = Counter(
    "anim_web_requests",
    "HTTP requests the web page answered, by route and status code.",
    ["route", "status"],
)
_REQUEST_SECONDS = Histogram(
    "anim_web_request_seconds",
    "Time to the first byte of a web page response, by route (event streams: until they open).",
    ["route"],
)
_JOB_ID_IN_PATH = re.compile(r"/[0-9a-f]{32}(?=/|$)")


def _route(path: str) -> str:
    """A bounded label for a path: job ids folded, static files together."""
    if path.startswith("/static/"):
        return "/static"
    return _JOB_ID_IN_PATH.sub("/{job_id}", path)[:64]


class ResponseStart:
    """At each HTTP response's start: adds the security headers above, counts the
    request and times it (pure ASGI, so event streams stay streams)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = _route(scope.get("path", ""))
        started = time.perf_counter()

        async def start(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_SECURITY_HEADERS]}
                _REQUESTS.labels(route, str(message["status"])).inc()
                _REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, start)


async def prometheus(request: Request) -> Response:
    """Prometheus metrics of this process (the page's own; the services serve theirs)."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _grpc_error(exc: grpc.aio.AioRpcError) -> tuple[int, str]:
    """(HTTP status, message for the visitor) of a failed planner call."""
    code = exc.code()
    details = exc.details() or code.name
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return 502, f"the planner refused the web service's credentials: {details}"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return _HTTP_STATUS[code], f"the planner is unavailable: {details}"
    return _HTTP_STATUS.get(code, 502), details


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _same_origin(request: Request) -> bool:
    """False for a POST another site's page made (cross-site request forgery).

    Browsers say where a request comes from in ``Sec-Fetch-Site`` (which a page
    cannot forge); older ones send ``Origin``, whose host must be the one this
    page was served from. Clients that send neither (curl, scripts) are not
    browsers, and no browser session rides along with them.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is not None:
        host = request.headers.get("host", "")
        return origin != "null" and urllib.parse.urlsplit(origin).netloc == host
    return True


class WebApp:
    """Route handlers around one planner client."""

    def __init__(
        self,
        client: AnimationClient,
        *,
        profiles: Sequence[str] = (),
        stopping: asyncio.Event | None = None,
        keepalive_s: float = KEEPALIVE_S,
    ) -> None:
        self.client = client
        self.profiles = list(profiles)
        self.stopping = stopping or asyncio.Event()
        self.keepalive_s = keepalive_s

    # -- helpers ------------------------------------------------------------------

    def _page(self, name: str, http_status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(render(name, **context), status_code=http_status)

    def _error(self, request: Request, status_code: int, message: str) -> Response:
        if _wants_json(request) or request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=status_code)
        return self._page("error.html", status_code, message=message, status_code=status_code)

    def _job_id(self, request: Request) -> str | None:
        job_id = request.path_params["job_id"]
        return job_id if keys.is_job_id(job_id) else None

    async def _recent(self) -> tuple[list[dict[str, Any]], str]:
        """The recent jobs, or an empty list and why."""
        try:
            animations = await self.client.list(page_size=RECENT_JOBS, limit=RECENT_JOBS)
        except grpc.aio.AioRpcError as exc:
            return [], _grpc_error(exc)[1]
        return views.recent(animations, RECENT_JOBS), ""

    async def _index(
        self, form: views.SubmitForm, error: str = "", status_code: int = 200
    ) -> HTMLResponse:
        jobs, list_error = await self._recent()
        if not form.idempotency_key:
            # One key per rendering of the form: submitting it twice is one job.
            form.idempotency_key = secrets.token_hex(16)
        return self._page(
            "index.html",
            status_code,
            form=form,
            error=error,
            jobs=jobs,
            list_error=list_error,
            profiles=self.profiles,
        )

    async def _form_fields(
        self, request: Request, max_bytes: int, max_fields: int
    ) -> dict[str, list[str]] | Response:
        """A posted form's fields, or the error response for a body that is not one."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            return self._error(
                request, 415, "the form must be sent as application/x-www-form-urlencoded"
            )
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                return self._error(request, 413, f"the form must be at most {max_bytes} bytes")
        try:
            return urllib.parse.parse_qs(
                body.decode("utf-8"), keep_blank_values=True, max_num_fields=max_fields
            )
        except (UnicodeDecodeError, ValueError):
            return self._error(request, 400, "the form is not valid UTF-8 form data")

    async def _job_page(
        self,
        anim: Any,
        http_status: int = 200,
        *,
        editor: dict[str, Any] | None = None,
        editor_error: str = "",
        fork: views.ForkForm | None = None,
        fork_error: str = "",
        extend: views.ExtendForm | None = None,
        extend_error: str = "",
    ) -> HTMLResponse:
        """The job page; a job waiting for review shows the storyboard editor (``editor``:
        the values to show, the planned ones by default), ``fork`` the "re-render from
        here" form of a frame; a fork plays its parent next to it."""
        job = views.job_view(anim)
        if editor is None and job["status"] == views.PLANNED:
            editor = views.board_draft(anim.storyboard_json)
        if fork is not None and not fork.idempotency_key:
            # One key per rendering of the form: sending it twice makes one fork.
            fork.idempotency_key = secrets.token_hex(16)
        if extend is None and views.extendable(job):
            extend = views.ExtendForm()
        if extend is not None and not extend.idempotency_key:
            extend.idempotency_key = secrets.token_hex(16)  # as the fork form's
        parent = await self._parent(anim)
        return HTMLResponse(
            job_html(
                job,
                editor=editor,
                editor_error=editor_error,
                fork=fork,
                fork_error=fork_error,
                parent=parent,
                extend=extend,
                extend_error=extend_error,
            ),
            status_code=http_status,
        )

    async def _parent(self, anim: Any) -> dict[str, Any] | None:
        """The parent a fork's page plays next to it (the job view names it), or None."""
        if not anim.HasField("fork") or not keys.is_job_id(anim.fork.parent_job_id):
            return None
        parent_id = anim.fork.parent_job_id
        parent = {
            "job_id": parent_id,
            "from_frame": str(anim.fork.from_frame),
            "error": "",
            "title": "",
            "status": "",
            "player": None,
        }
        try:
            view = views.job_view(await self.client.get(parent_id))
        except grpc.aio.AioRpcError as exc:
            return {**parent, "error": f"the parent job: {_grpc_error(exc)[1]}"}
        return {
            **parent,
            "title": view["title"],
            "status": view["status"],
            "player": views.player(view),
        }

    # -- pages --------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        return await self._index(views.SubmitForm())

    async def submit(self, request: Request) -> Response:
        if not _same_origin(request):
            return self._error(request, 403, "cross-site form submissions are refused")
        fields = await self._form_fields(request, views.FORM_BYTES, 32)
        if isinstance(fields, Response):
            return fields
        form = views.read_form(fields)
        try:
            req = views.build_request(form)
        except ValueError as exc:
            return await self._index(form, str(exc), 400)
        try:
            resp = await self.client.create(req)
        except grpc.aio.AioRpcError as exc:
            status_code, message = _grpc_error(exc)
            return await self._index(form, message, status_code)
        log.info("job submitted from the web page", extra={"job_id": resp.job_id})
        return RedirectResponse(f"/jobs/{resp.job_id}", status_code=303)

    async def job_page(self, request: Request) -> Response:
        job_id = self._job_id(request)
        if job_id is None:
            return self._error(request, 404, "no such job: a job id is 32 hex characters")
        try:
            anim = await self.client.get(job_id)
        except grpc.aio.AioRpcError as exc:
            return self._error(request, *_grpc_error(exc))
        frame = request.query_params.get("frame")
        if frame is None:
            return await self._job_page(anim)
        # A click on a frame of the strip: its shot and the seed, to re-render from it.
        form = views.ForkForm(frame[:40], {}, "")
        if status_name(anim.status) not in views.TERMINAL:
            return await self._job_page(
                anim,
                409,
                fork=form,
                fork_error=f"re-render from a frame once the job has finished, failed or "
                f"been cancelled; it is {status_name(anim.status)}",
            )
        try:
            k = views.check_from_frame(frame, anim.frames_total)
        except ValueError as exc:
            return await self._job_page(anim, 400, fork=form, fork_error=str(exc))
        return await self._job_page(anim, fork=views.fork_form(anim, k))

    async def _job_form(
        self, request: Request, max_bytes: int, max_fields: int
    ) -> tuple[str, Any, dict[str, list[str]]] | Response:
        """What a form posted on a job's page brings: the job id, the job as the planner
        has it and the form's fields; or the error page (another site's post, a bad job
        id, a form too large or not UTF-8, a job the planner refuses to show)."""
        if not _same_origin(request):
            return self._error(request, 403, "cross-site form submissions are refused")
        job_id = self._job_id(request)
        if job_id is None:
            return self._error(request, 404, "no such job: a job id is 32 hex characters")
        fields = await self._form_fields(request, max_bytes, max_fields)
        if isinstance(fields, Response):
            return fields
        try:
            anim = await self.client.get(job_id)
        except grpc.aio.AioRpcError as exc:
            return self._error(request, *_grpc_error(exc))
        return job_id, anim, fields

    async def approve(self, request: Request) -> Response:
        """POST /jobs/{id}/approve: the storyboard editor of a job waiting for review."""
        posted = await self._job_form(request, views.EDITOR_FORM_BYTES, views.EDITOR_FORM_FIELDS)
        if isinstance(posted, Response):
            return posted
        job_id, anim, fields = posted
        shots = len((views.board_draft(anim.storyboard_json) or {"shots": []})["shots"])
        draft = views.read_board_draft(fields, shots)
        try:
            storyboard_json = views.approval_json(anim.storyboard_json, draft)
        except ValueError as exc:
            return await self._job_page(anim, 400, editor=draft, editor_error=str(exc))
        try:
            await self.client.approve(job_id, storyboard_json)
        except grpc.aio.AioRpcError as exc:
            status_code, message = _grpc_error(exc)
            return await self._job_page(anim, status_code, editor=draft, editor_error=message)
        log.info(
            "job approved from the web page",
            extra={"job_id": job_id, "edited": bool(storyboard_json)},
        )
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    async def fork(self, request: Request) -> Response:
        """POST /jobs/{id}/fork: "re-render from here", a fork of this job from frame K."""
        # A shot's prompts in any script, percent-encoded: the editor's bound, not the idea's.
        posted = await self._job_form(request, views.EDITOR_FORM_BYTES, 32)
        if isinstance(posted, Response):
            return posted
        job_id, anim, fields = posted
        form = views.read_fork_form(fields)
        try:
            req = views.build_fork_request(anim, form)
        except ValueError as exc:
            return await self._job_page(anim, 400, fork=form, fork_error=str(exc))
        try:
            resp = await self.client.fork(req)
        except grpc.aio.AioRpcError as exc:
            status_code, message = _grpc_error(exc)
            return await self._job_page(anim, status_code, fork=form, fork_error=message)
        log.info(
            "fork created from the web page",
            extra={"job_id": resp.job_id, "parent": job_id, "from_frame": req.fork.from_frame},
        )
        return RedirectResponse(f"/jobs/{resp.job_id}", status_code=303)

    async def extend(self, request: Request) -> Response:
        """POST /jobs/{id}/extend: "extend by M frames", a new job keeping every frame."""
        posted = await self._job_form(request, views.FORM_BYTES, 8)
        if isinstance(posted, Response):
            return posted
        job_id, anim, fields = posted
        form = views.read_extend_form(fields)
        try:
            req = views.build_extend_request(anim, form)
        except ValueError as exc:
            return await self._job_page(anim, 400, extend=form, extend_error=str(exc))
        try:
            resp = await self.client.extend(req)
        except grpc.aio.AioRpcError as exc:
            status_code, message = _grpc_error(exc)
            return await self._job_page(anim, status_code, extend=form, extend_error=message)
        log.info(
            "extension created from the web page",
            extra={"job_id": resp.job_id, "parent": job_id, "frames": req.frames},
        )
        return RedirectResponse(f"/jobs/{resp.job_id}", status_code=303)

    async def cancel(self, request: Request) -> Response:
        return await self._control(request, "cancel")

    async def resume(self, request: Request) -> Response:
        return await self._control(request, "resume")

    async def _control(self, request: Request, action: str) -> Response:
        """POST /jobs/{id}/cancel or /resume."""
        if not _same_origin(request):
            return self._error(request, 403, "cross-site requests are refused")
        job_id = self._job_id(request)
        if job_id is None:
            return self._error(request, 404, "no such job: a job id is 32 hex characters")
        call = {"cancel": self.client.cancel, "resume": self.client.resume}[action]
        try:
            await call(job_id)
            anim = await self.client.get(job_id)
        except grpc.aio.AioRpcError as exc:
            return self._error(request, *_grpc_error(exc))
        log.info(f"job {action} from the web page", extra={"job_id": job_id})
        if _wants_json(request):
            return JSONResponse(views.job_view(anim))
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    # -- JSON -----------------------------------------------------------------------

    async def api_jobs(self, request: Request) -> Response:
        raw = request.query_params.get("limit", str(RECENT_JOBS))
        try:
            limit = limits.LIST_PAGE_SIZE.check("limit", int(raw))
        except ValueError:
            return self._error(
                request, 400, f"limit: must be {limits.LIST_PAGE_SIZE.describe()}, got {raw!r:.40}"
            )
        try:
            animations = await self.client.list(page_size=limit, limit=limit)
        except grpc.aio.AioRpcError as exc:
            return self._error(request, *_grpc_error(exc))
        return JSONResponse({"jobs": views.recent(animations, limit)})

    async def api_job(self, request: Request) -> Response:
        job_id = self._job_id(request)
        if job_id is None:
            return self._error(request, 404, "no such job: a job id is 32 hex characters")
        try:
            anim = await self.client.get(job_id)
        except grpc.aio.AioRpcError as exc:
            return self._error(request, *_grpc_error(exc))
        return JSONResponse(views.job_view(anim), headers={"cache-control": "no-store"})

    # -- server-sent events -----------------------------------------------------------

    async def events(self, request: Request) -> Response:
        job_id = self._job_id(request)
        if job_id is None:
            return self._error(request, 404, "no such job: a job id is 32 hex characters")
        try:
            after = views.parse_after(
                request.headers.get("last-event-id"), request.query_params.get("after")
            )
        except ValueError as exc:
            return self._error(request, 400, str(exc))
        try:
            # A missing job is a 404 now, not an error in the middle of a stream.
            await self.client.get(job_id)
        except grpc.aio.AioRpcError as exc:
            return self._error(request, *_grpc_error(exc))
        return StreamingResponse(
            self._relay(job_id, after),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def _relay(self, job_id: str, after: int) -> AsyncIterator[str]:
        """WatchAnimation as SSE messages; ``end`` after the job's terminal event.

        A dropped stream (planner restart, this replica stopping) just ends: the
        browser's EventSource reconnects with ``Last-Event-ID`` and resumes after
        the last event it had.
        """
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=256)

        async def pump() -> None:
            try:
                async for event in self.client.watch(job_id, after_sequence=after):
                    await queue.put(event)
                await queue.put(_END)
            except grpc.aio.AioRpcError as exc:
                await queue.put(exc)

        yield f"retry: {RETRY_MS}\n\n"
        pumping = asyncio.create_task(pump())
        stopping = asyncio.create_task(self.stopping.wait())
        getting: asyncio.Task[Any] | None = None
        try:
            while True:
                getting = getting or asyncio.create_task(queue.get())
                done, _ = await asyncio.wait(
                    {getting, stopping},
                    timeout=self.keepalive_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if getting not in done:
                    if stopping in done:
                        return  # the service stops: the browser reconnects elsewhere
                    yield ": keepalive\n\n"
                    continue
                item, getting = getting.result(), None
                if item is _END:
                    yield views.sse_message("end", {"job_id": job_id})
                    return
                if isinstance(item, grpc.aio.AioRpcError):
                    status_code, message = _grpc_error(item)
                    yield views.sse_message(
                        "relay.error", {"status": status_code, "message": message}
                    )
                    return
                yield views.sse_message(
                    event_name(item.type), views.event_view(item), item.sequence
                )
        finally:
            for task in (pumping, stopping, getting):
                if task is not None:
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumping

    # -- health -------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(self, request: Request) -> Response:
        """200 once the planner's grpc.health.v1 answers SERVING (health needs no token)."""
        try:
            reply = await health_pb2_grpc.HealthStub(self.client.channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2.0
            )
        except grpc.aio.AioRpcError as exc:
            return JSONResponse({"planner": exc.code().name}, status_code=503)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        ok = reply.status == health_pb2.HealthCheckResponse.SERVING
        return JSONResponse({"planner": status}, status_code=200 if ok else 503)


def create_app(
    client: AnimationClient,
    *,
    profiles: Sequence[str] = (),
    stopping: asyncio.Event | None = None,
    keepalive_s: float = KEEPALIVE_S,
) -> ASGIApp:
    """The page's ASGI app around ``client``; ``stopping`` ends every event stream."""
    web = WebApp(client, profiles=profiles, stopping=stopping, keepalive_s=keepalive_s)
    app = Starlette(
        routes=[
            Route("/", web.index, methods=["GET"]),
            Route("/jobs", web.submit, methods=["POST"]),
            Route("/jobs/{job_id}", web.job_page, methods=["GET"]),
            Route("/jobs/{job_id}/events", web.events, methods=["GET"]),
            Route("/jobs/{job_id}/cancel", web.cancel, methods=["POST"]),
            Route("/jobs/{job_id}/resume", web.resume, methods=["POST"]),
            Route("/jobs/{job_id}/approve", web.approve, methods=["POST"]),
            Route("/jobs/{job_id}/fork", web.fork, methods=["POST"]),
            Route("/jobs/{job_id}/extend", web.extend, methods=["POST"]),
            Route("/api/jobs", web.api_jobs, methods=["GET"]),
            Route("/api/jobs/{job_id}", web.api_job, methods=["GET"]),
            Route("/healthz", web.healthz, methods=["GET"]),
            Route("/readyz", web.readyz, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
    )
    app.state.web = web
    return ResponseStart(app)

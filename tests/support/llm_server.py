"""A local stand-in for hosted LLM APIs: an OpenAI-compatible chat-completions server.

Hosted APIs (Hugging Face inference providers, OpenAI-compatible servers) cannot be reached
from the tests, and a real model cannot be steered into the replies the tests need, so this
server (``http.server`` in a thread on 127.0.0.1, a free port) speaks their protocol:
``POST {base_url}/chat/completions`` with ``{"model", "messages", ...}`` answered by
``{"choices": [{"message": {"role": "assistant", "content": ...}}]}``. It serves the hf
backend as well, through ``InferenceClient(base_url=...)``, which sends the same request.

What it answers is scripted. A script is either a list of steps taken in order, one per
request (the last step repeats), or a function of the request body that returns a step; every
request is recorded (path, headers with lower-case names, body). Error answers of the hosted
APIs, copied from what they send, are in ``support/llm_errors.py``: :class:`Error` replays one,
:class:`Refuse` replays one only to requests holding a given field, as a server that does not
take that field does.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """200 with this assistant content."""

    content: str
    finish_reason: str = "stop"


@dataclass
class Status:
    """An HTTP error answer (e.g. 429, 503) with an OpenAI-style error body."""

    code: int
    message: str = "error"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Hang:
    """No answer for ``seconds`` (or until the server stops), then the connection closes."""

    seconds: float


@dataclass
class RejectResponseFormat:
    """400 when the request asks for ``response_format``; otherwise ``then`` (a step, or a
    function of the request body that returns one)."""

    then: Any


@dataclass
class Error:
    """An error answer sent as it is: ``answer.status`` with ``answer.body`` (an
    :class:`support.llm_errors.ErrorAnswer`)."""

    answer: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Refuse:
    """``answer`` (an :class:`support.llm_errors.ErrorAnswer`) when the request holds the field
    ``name``; otherwise ``then`` (a step, or a function of the request body that returns one)."""

    name: str
    answer: Any
    then: Any


Step = Reply | Status | Hang | RejectResponseFormat | Error | Refuse
Script = Sequence[Step] | Callable[[dict[str, Any]], Step]


def frames_asked(body: dict[str, Any]) -> int:
    """The frame count of the conversation (the planner's first user message says it)."""
    first_user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    return int(re.search(r"Frames: (\d+)", first_user).group(1))


def idea_of(body: dict[str, Any]) -> str:
    first_user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    return json.loads(first_user.split("BEGIN IDEA\n", 1)[1].split("\nEND IDEA", 1)[0])


def existing_of(body: dict[str, Any]) -> dict[str, Any] | None:
    """The storyboard so far that a continuation request carries (None for a plan)."""
    first_user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    if "BEGIN STORYBOARD\n" not in first_user:
        return None
    return json.loads(first_user.split("BEGIN STORYBOARD\n", 1)[1].split("\nEND STORYBOARD")[0])


def turn(body: dict[str, Any]) -> int:
    """0 for the first request of a conversation, 1 for the first repair, ..."""
    return (len(body["messages"]) - 2) // 2


def storyboard(frames: int, *, title: str = "Lanterns over the river", **extra: Any) -> dict:
    """A valid storyboard of ``frames`` short, distinct prompts with gentle camera moves."""
    subjects = ["paper lanterns", "a wooden bridge", "a quiet river", "a small girl", "a red fox"]
    shots = [
        {
            "prompt": f"{subjects[i % len(subjects)]} at dusk, shot {i + 1}, warm light",
            "camera": {"zoom": 1.02},
            **({"continuity": "cut"} if i == 2 else {}),
        }
        for i in range(frames)
    ]
    return {"title": title, "frames": shots, **extra}


def valid_reply(body: dict[str, Any]) -> Reply:
    return Reply(json.dumps(storyboard(frames_asked(body))))


class ChatServer:
    """The server; a context manager. ``base_url`` ends in ``/v1`` like real servers."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self._next = 0
        self._lock = threading.Lock()
        self._released = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.requests.append(
                        {
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                        }
                    )
                if not self.path.endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                step = server._step(body)
                while isinstance(step, RejectResponseFormat | Refuse):
                    if isinstance(step, Refuse) and step.name in body:
                        self._send(step.answer.status, step.answer.body)
                        return
                    if isinstance(step, RejectResponseFormat) and "response_format" in body:
                        self._send(400, {"error": {"message": "response_format not supported"}})
                        return
                    step = step.then(body) if callable(step.then) else step.then
                if isinstance(step, Error):
                    self._send(step.answer.status, step.answer.body, step.headers)
                    return
                if isinstance(step, Hang):
                    server._released.wait(step.seconds)
                    self.close_connection = True
                    return
                if isinstance(step, Status):
                    self._send(step.code, {"error": {"message": step.message}}, step.headers)
                    return
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-{len(server.requests)}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body.get("model", ""),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": step.content},
                                "finish_reason": step.finish_reason,
                            }
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    },
                )

            def _send(self, code: int, data: dict, headers: dict[str, str] | None = None) -> None:
                raw = json.dumps(data).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def _step(self, body: dict[str, Any]) -> Step:
        if callable(self.script):
            return self.script(body)
        with self._lock:
            index = min(self._next, len(self.script) - 1)
            self._next += 1
        step = self.script[index]
        return step(body) if callable(step) else step

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests]

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._released.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

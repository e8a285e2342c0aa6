"""Chat backends of the storyboard planner: hf, openai and local.

Each backend turns a conversation (a list of ``{"role", "content"}`` messages) into the
assistant's reply text, and nothing more: prompting, parsing and repairs live in
:mod:`ghibli_anim.services.planner.storyboard_llm`. Calls are blocking (the planner runs them in a
worker thread) and bounded:

* every request has a time limit (``ANIM_PLANNER_TIMEOUT_S``); one that runs past it raises
  :class:`LLMTimeout` and is not retried (a hung server rarely recovers within a job's time);
* an answer 429 or 5xx, or a server that cannot be reached, is retried
  ``ANIM_PLANNER_RETRIES`` times with exponential backoff (``Retry-After`` is honoured, capped),
  except a 429 that says the account is out of quota;
* any other failure raises :class:`LLMError` naming the backend, model and endpoint, what went
  wrong (its ``kind``) and the variable to set: a model the server does not serve, a key it
  refuses, an account without credits, a parameter it refuses, any other refused request.

Backends:

* ``hf``: ``huggingface_hub.InferenceClient(...).chat_completion`` with ``ANIM_PLANNER_MODEL``
  (default ``openai/gpt-oss-20b``) through ``ANIM_PLANNER_PROVIDER``, or through the endpoint
  ``ANIM_PLANNER_BASE_URL`` (a dedicated endpoint, a TGI server).
* ``openai``: OpenAI's API or any OpenAI-compatible ``/chat/completions`` server (vLLM, TGI,
  llama.cpp, Ollama) by ``ANIM_PLANNER_BASE_URL``, over plain HTTP from the standard library.
* ``local``: a transformers causal language model (``ANIM_PLANNER_LOCAL_MODEL``, a hub id or a
  folder under ``ANIM_MODEL_ROOTS``) with its chat template. torch is imported only when this
  backend loads its model, so the planner starts without torch with every other backend.

hf and openai ask for a JSON object (``response_format``) at a low temperature. A server that
refuses an optional part of the request (400 or 422 naming ``response_format`` or
``temperature``, as OpenAI's reasoning models do for ``temperature``) is asked again without it,
once, and is not asked with it again; a server that refuses ``max_tokens`` for
``max_completion_tokens`` (or the other way round) is asked again with the other one. Each such
change is noted in the attempt's record. A 400 or 422 that names nothing, to a request with
``response_format``, is taken as a refusal of JSON mode, as older servers answer.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ghibli_anim.contracts import model_refs
from ghibli_anim.runtime.retry import RetryError, with_backoff

log = logging.getLogger(__name__)

# Served for chat completion, with structured outputs, by Hugging Face Inference Providers
# (https://huggingface.co/docs/inference-providers/guides/gpt-oss; the groq and ovhcloud
# provider pages list it). The seed paper's mistralai/Mistral-7B-Instruct-v0.3 is one
# setting away: ANIM_PLANNER_MODEL, with ANIM_PLANNER_BASE_URL where no provider serves it.
DEFAULT_MODEL = "openai/gpt-oss-20b"
# An example for errors about models on OpenAI's own API (one of its chat models).
OPENAI_EXAMPLE_MODEL = "gpt-5-mini"
OPENAI_API_HOST = "api.openai.com"
HF_ROUTER_HOST = "router.huggingface.co"
# Low temperature: the reply must be strict JSON, and repairs should converge.
TEMPERATURE = 0.3
# Hosted APIs (OpenAI's, Hugging Face's providers) serve reasoning models, whose thinking
# counts against the token limit: with only the reply's budget they can stop before writing
# anything. The limit is a cap, not a cost; self-hosted servers get the bare budget, since
# some refuse a limit beyond their context.
REASONING_ROOM_TOKENS = 4096
# Longest backoff between two tries, and the most a Retry-After header may ask for.
MAX_BACKOFF_S = 30.0
# A reply larger than this is not a storyboard (the schema caps one at 64 KiB).
MAX_REPLY_BYTES = 4 * 1024 * 1024

# What went wrong (LLMError.kind, and ``error_kind`` in an attempt's record).
MODEL_UNAVAILABLE = "model_unavailable"
AUTH = "auth"
NO_CREDITS = "no_credits"
RATE_LIMITED = "rate_limited"
SERVER_ERROR = "server_error"
UNREACHABLE = "unreachable"
TIMEOUT = "timeout"
JSON_MODE_REFUSED = "json_mode_refused"
PARAMETER_REFUSED = "parameter_refused"
REQUEST_REFUSED = "request_refused"
TRUNCATED = "truncated"
BAD_ANSWER = "bad_answer"

Message = dict[str, str]
T = TypeVar("T")


class LLMError(RuntimeError):
    """A chat call failed; the message names the backend, the model and the endpoint, what went
    wrong and, where a setting can fix it, which one."""

    def __init__(self, message: str, kind: str = BAD_ANSWER) -> None:
        super().__init__(message)
        self.kind = kind


class LLMTimeout(LLMError):
    """A chat call ran past its time limit."""

    def __init__(self, message: str) -> None:
        super().__init__(message, TIMEOUT)


class _Retryable(Exception):
    """A failure worth another try (429, 5xx, unreachable server)."""

    def __init__(self, message: str, retry_after_s: float | None = None, kind: str = "") -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.kind = kind or SERVER_ERROR


@dataclass(frozen=True)
class ServerError:
    """An HTTP error answer as the server explained it (OpenAI's ``{"error": {...}}`` shape,
    a bare ``{"error": "text"}``, vLLM's top-level fields, FastAPI's ``detail``, or text)."""

    status: int
    message: str
    """The server's message, whitespace collapsed, at most 300 characters."""
    code: str = ""
    """A machine code such as ``model_not_found`` or ``unsupported_parameter`` (if any)."""
    param: str = ""
    """The request field the server objects to (if it says)."""
    type: str = ""

    def describe(self) -> str:
        return f"HTTP {self.status}: {self.message}"


def _text(value: Any) -> str:
    return "" if value is None or isinstance(value, (dict, list)) else str(value)


def parse_error(status: int, body: bytes) -> ServerError:
    """The error answer ``body`` of an HTTP ``status``, whatever shape the server gave it."""
    text = body.decode("utf-8", "replace")
    fields: dict[str, Any] = {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict):
            fields = err
            text = _text(err.get("message")) or json.dumps(err)
        elif isinstance(err, str):
            fields = data
            text = err
        else:
            text = json.dumps(err)
    message = " ".join(text.split())[:300]
    return ServerError(
        status,
        message,
        code=_text(fields.get("code")),
        param=_text(fields.get("param")),
        type=_text(fields.get("type") or fields.get("error_type")),
    )


_MODEL_RE = re.compile(
    r"\bmodel\b.*\b(not supported|not found|does not exist|not available|unknown|not served)",
    re.I,
)
_UNSUPPORTED_RE = re.compile(r"unsupported|not supported|unknown|not allowed|extra|invalid", re.I)
# Fields every request needs: a refusal naming them is about their value, not the option.
_CORE_FIELDS = ("model", "messages")


def refused_field(err: ServerError, sent: Collection[str]) -> str:
    """The request field a refusal names (its ``param``, or a field its message calls
    unsupported), or ''. ``model`` and ``messages`` do not count."""
    fields = [f for f in sent if f not in _CORE_FIELDS]
    if err.param in fields:
        return err.param
    if not _UNSUPPORTED_RE.search(err.message):
        return ""
    for name in fields:
        if re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", err.message):
            return name
    return ""


def classify(err: ServerError, sent: Collection[str]) -> str:
    """What a refused request means (a kind), from the status and the server's own words;
    ``sent`` are the fields of the request."""
    if err.status in (401, 403):
        return AUTH
    if err.status == 402 or "insufficient_quota" in (err.code, err.type):
        return NO_CREDITS
    if err.status == 429:
        return RATE_LIMITED
    if err.status >= 500:
        return SERVER_ERROR
    # A named field first: "'max_tokens' is not supported with this model" is about the
    # field, not the model.
    field = refused_field(err, sent)
    if field == "response_format":
        return JSON_MODE_REFUSED
    if field:
        return PARAMETER_REFUSED
    if (
        err.code in ("model_not_found", "model_not_supported")
        or err.param == "model"
        or (err.status == 404 and "model" in err.message.lower())
        or _MODEL_RE.search(err.message)
    ):
        return MODEL_UNAVAILABLE
    if err.status in (400, 422) and "response_format" in sent and not err.param:
        return JSON_MODE_REFUSED  # older servers refuse the field without naming it
    return REQUEST_REFUSED


class _Refused(Exception):
    """A 4xx the backend may get past by changing its request."""

    def __init__(self, err: ServerError, kind: str, param: str) -> None:
        super().__init__(err.describe())
        self.err = err
        self.kind = kind
        self.param = param


# OpenAI keys (sk-..., shown masked as sk-abcd***wxyz) and Hugging Face tokens (hf_...).
_SECRET_RE = re.compile(r"\b(?:sk-[A-Za-z0-9*_-]{4,}|hf_[A-Za-z0-9*]{4,})")


def _redact(text: str, key: str) -> str:
    """``text`` without the key, or anything shaped like one (servers echo keys, masked or
    not, in their 401s)."""
    if key:
        text = text.replace(key, "***")
    return _SECRET_RE.sub("***", text)


class ChatBackend(Protocol):
    """What the storyboarder needs from a backend."""

    name: str
    """``hf``, ``openai`` or ``local``."""
    model: str

    def describe(self) -> str:
        """Backend, model and endpoint, for errors and records (no secrets)."""
        ...

    def chat(
        self, messages: Sequence[Message], *, max_tokens: int, notes: list[str] | None = None
    ) -> str:
        """The assistant's reply to ``messages``; raises LLMError or LLMTimeout.

        ``notes`` receives one line per change made to get an answer (a parameter left out
        after the server refused it, a reply cut at the token limit)."""
        ...


@dataclass(frozen=True)
class RetryPolicy:
    """How a backend retries 429, 5xx and unreachable servers; the wait rule itself is
    :func:`ghibli_anim.runtime.retry.with_backoff`'s."""

    retries: int = 3
    """Tries after the first one, for retryable failures only."""
    backoff_s: float = 0.5
    """Wait before the first retry; doubles each time, up to MAX_BACKOFF_S."""


def _asked_wait_s(exc: BaseException) -> float | None:
    """The wait a failed call's server asked for (its Retry-After), if any."""
    return exc.retry_after_s if isinstance(exc, _Retryable) else None


def _with_retries(call: Callable[[], T], policy: RetryPolicy, what: str) -> T:
    """``call()``, retried on :class:`_Retryable` failures as ``policy`` says; LLMError naming
    ``what`` and the number of tries once they run out. Other failures pass at once."""
    retrying = with_backoff(
        retry_on=_Retryable,
        retries=policy.retries,
        backoff_s=policy.backoff_s,
        max_wait_s=MAX_BACKOFF_S,
        asked_wait_s=_asked_wait_s,
        log=log,
        what="planner LLM call",
        log_extra={"backend": what},
    )
    try:
        return retrying(call)
    except RetryError as exc:
        last = exc.last_attempt
        failure = last.exception()
        kind = failure.kind if isinstance(failure, _Retryable) else SERVER_ERROR
        message = f"{what}: {failure} (after {last.attempt_number} tries)"
        if kind == RATE_LIMITED:
            message += "; the server is limiting requests: try again later, or raise "
            message += "ANIM_PLANNER_RETRIES"
        raise LLMError(message, kind) from None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (only the delta-seconds form; dates are ignored)."""
    if not value:
        return None
    try:
        return float(value.strip())
    except ValueError:
        return None


def _safe_url(url: str) -> str:
    """The URL without user info, query or fragment (safe to log and record)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _finished(content: str, finish_reason: Any, limit: int, what: str, notes: list[str]) -> str:
    """The reply text; a reply cut at the token limit before any text is an error (a reasoning
    model spent the budget thinking), one cut later is noted and checked as it is."""
    if finish_reason == "length":
        if not content.strip():
            raise LLMError(
                f"{what}: the reply reached the limit of {limit} tokens before any text (a "
                "reasoning model may have spent them thinking); set ANIM_PLANNER_MODEL to "
                "a model that answers within it",
                TRUNCATED,
            )
        notes.append(f"the reply was cut at the limit of {limit} tokens")
    return content


def _served_by(base_url: str) -> str:
    return f"set ANIM_PLANNER_MODEL to a model the server at {_safe_url(base_url)} serves"


class _Adaptive:
    """What the hf and openai backends share: the optional parts of a request, left out once
    a server refuses them, and the errors that say what to set."""

    name: str
    model: str
    # Fields the backend may leave out (or swap) to get past a refusal.
    optional: tuple[str, ...] = ("response_format", "temperature")

    def _init_adaptive(self) -> None:
        self._left_out: set[str] = set()
        self._lock_adapt = threading.Lock()

    def describe(self) -> str:
        raise NotImplementedError

    def _adapt(self, refused: _Refused) -> str | None:
        """Change the request to get past ``refused``; the note saying so, or None when no
        change can help (the refusal is then the call's error)."""
        param = "response_format" if refused.kind == JSON_MODE_REFUSED else refused.param
        if refused.kind not in (JSON_MODE_REFUSED, PARAMETER_REFUSED):
            return None
        with self._lock_adapt:
            if param in self._left_out or param not in self.optional:
                return None
            self._left_out.add(param)
        what = "JSON mode (response_format)" if param == "response_format" else param
        return f"the server refused {what} ({refused.err.describe()}); asked again without it"

    def advice(self, kind: str) -> str:
        """The setting that fixes a failure of this kind, as one clause (or '')."""
        raise NotImplementedError

    def _sending(self, send: Callable[[], T], key: str, notes: list[str]) -> T:
        """``send()`` again after each refusal the request can be changed to get past (the
        change noted in ``notes``); a refusal it cannot get past is the call's error."""
        while True:
            try:
                return send()
            except _Refused as refused:
                note = self._adapt(refused)
                if note is None:
                    raise self._refusal_error(refused, key) from None
                log.info(
                    "the server refused part of the request",
                    extra={"backend": self.name, "note": note},
                )
                notes.append(note)

    def _refusal_error(self, refused: _Refused, key: str) -> LLMError:
        kind = refused.kind
        what = {
            MODEL_UNAVAILABLE: "the model is not available",
            AUTH: "the key was refused",
            NO_CREDITS: "the account is out of credits or quota",
            JSON_MODE_REFUSED: "the server refused JSON mode (response_format)",
            PARAMETER_REFUSED: f"the server refused the parameter {refused.param}",
        }.get(kind, "the server refused the request")
        text = f"{self.describe()}: {what} ({_redact(refused.err.describe(), key)})"
        advice = self.advice(kind)
        return LLMError(f"{text}; {advice}" if advice else text, kind)


def _classified(err: ServerError, sent: Collection[str], retry_after: str | None) -> Exception:
    """The exception for an error answer: retryable (429, 5xx) or a refusal."""
    kind = classify(err, sent)
    if kind in (RATE_LIMITED, SERVER_ERROR):
        return _Retryable(err.describe(), _retry_after(retry_after), kind)
    return _Refused(err, kind, refused_field(err, sent) if kind == PARAMETER_REFUSED else "")


# ---------------------------------------------------------------------------
# openai: any OpenAI-compatible chat-completions server, standard library HTTP
# ---------------------------------------------------------------------------


class OpenAIBackend(_Adaptive):
    """``POST {base_url}/chat/completions`` (the OpenAI protocol) with a bearer key."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str = DEFAULT_MODEL,
        *,
        api_key: str = "",
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"ANIM_PLANNER_BASE_URL: must be an http:// or https:// URL, got {base_url!r:.200}"
            )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._url = urlsplit(self.base_url + "/chat/completions")
        self._init_adaptive()
        self.openai_api = parts.hostname == OPENAI_API_HOST
        # OpenAI's API takes max_completion_tokens: max_tokens is deprecated there and refused by
        # its reasoning models. Other servers get max_tokens: some read only that one and would
        # ignore the limit (Ollama's documented fields; llama.cpp's server before
        # ggml-org/llama.cpp#19831). A refusal naming either swaps them, once.
        self._token_field = "max_completion_tokens" if self.openai_api else "max_tokens"
        self._swapped = False

    def describe(self) -> str:
        return f"openai backend (model {self.model}, server {_safe_url(self.base_url)})"

    def token_limit(self, max_tokens: int) -> int:
        """The limit sent for a reply budget of ``max_tokens`` (room to think on OpenAI's API)."""
        return max_tokens + REASONING_ROOM_TOKENS if self.openai_api else max_tokens

    def request_body(self, messages: Sequence[Message], *, max_tokens: int) -> dict[str, Any]:
        """The request as it would be sent now (fields the server refused are left out)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in messages],
            self._token_field: self.token_limit(max_tokens),
            "stream": False,
        }
        if "temperature" not in self._left_out:
            body["temperature"] = TEMPERATURE
        if "response_format" not in self._left_out:
            body["response_format"] = {"type": "json_object"}
        return body

    def _adapt(self, refused: _Refused) -> str | None:
        field = refused.param
        if refused.kind == PARAMETER_REFUSED and field in ("max_tokens", "max_completion_tokens"):
            with self._lock_adapt:
                if self._swapped or field != self._token_field:
                    return None
                other = (
                    "max_tokens" if field == "max_completion_tokens" else "max_completion_tokens"
                )
                self._token_field, self._swapped = other, True
            return (
                f"the server refused {field} ({refused.err.describe()}); asked again with {other}"
            )
        return super()._adapt(refused)

    def advice(self, kind: str) -> str:
        if kind == MODEL_UNAVAILABLE:
            if self.openai_api:
                example = OPENAI_EXAMPLE_MODEL
                return f"set ANIM_PLANNER_MODEL to a model your key can use, e.g. {example}"
            return _served_by(self.base_url)
        if kind == AUTH:
            if self.openai_api:
                return "set ANIM_PLANNER_API_KEY to an OpenAI API key with access to the model"
            return "set ANIM_PLANNER_API_KEY to a key the server accepts"
        if kind == NO_CREDITS:
            return "add credits to the account, or plan with another ANIM_PLANNER_BACKEND"
        return ""

    def chat(
        self, messages: Sequence[Message], *, max_tokens: int, notes: list[str] | None = None
    ) -> str:
        noted = notes if notes is not None else []

        def once() -> dict[str, Any]:
            # The body is built again on every try: a refusal changes what goes in it.
            return self._sending(
                lambda: self._post(self.request_body(messages, max_tokens=max_tokens)),
                self._api_key,
                noted,
            )

        data = _with_retries(once, self.retry, self.describe())
        try:
            choice = data["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise LLMError(
                f"{self.describe()}: the answer has no choices[0].message.content"
            ) from None
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise LLMError(f"{self.describe()}: choices[0].message.content is not text")
        limit = self.token_limit(max_tokens)
        return _finished(content, choice.get("finish_reason"), limit, self.describe(), noted)

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s  # per request, like the hf client's

        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LLMTimeout(f"{self.describe()}: no answer within {self.timeout_s:g} s")
            return remaining

        raw = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        conn_cls = (
            http.client.HTTPSConnection
            if self._url.scheme == "https"
            else http.client.HTTPConnection
        )
        conn = conn_cls(self._url.hostname, self._url.port, timeout=left())
        path = self._url.path + (f"?{self._url.query}" if self._url.query else "")
        try:
            conn.request("POST", path, body=raw, headers=headers)
            resp = conn.getresponse()
            chunks: list[bytes] = []
            size = 0
            while True:
                # Each read may wait only for what is left of the call's time limit.
                if conn.sock is not None:
                    conn.sock.settimeout(left())
                chunk = resp.read1(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    raise LLMError(f"{self.describe()}: answer larger than {MAX_REPLY_BYTES} bytes")
                chunks.append(chunk)
        except TimeoutError:
            raise LLMTimeout(f"{self.describe()}: no answer within {self.timeout_s:g} s") from None
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            raise _Retryable(f"cannot reach the server: {exc}", kind=UNREACHABLE) from None
        finally:
            conn.close()
        data = b"".join(chunks)
        if resp.status >= 400:
            err = parse_error(resp.status, data)
            raise _classified(err, body, resp.getheader("Retry-After"))
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise LLMError(f"{self.describe()}: the answer is not JSON") from None


# ---------------------------------------------------------------------------
# hf: huggingface_hub.InferenceClient
# ---------------------------------------------------------------------------


class HFBackend(_Adaptive):
    """``InferenceClient.chat_completion`` on a provider, or on an endpoint by base URL."""

    name = "hf"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        provider: str = "auto",
        base_url: str = "",
        token: str = "",
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        from huggingface_hub import InferenceClient

        self.model = model
        self.provider = provider or "auto"
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._token = token
        self._init_adaptive()
        # Hugging Face's router (a provider, or the router's URL) serves reasoning models too.
        self.hosted = not self.base_url or urlsplit(self.base_url).hostname == HF_ROUTER_HOST
        if self.base_url:
            # With a URL the client talks to that server alone; the provider plays no part.
            self._client = InferenceClient(
                base_url=self.base_url, api_key=token or None, timeout=timeout_s
            )
        else:
            self._client = InferenceClient(
                provider=self.provider, api_key=token or None, timeout=timeout_s
            )

    def describe(self) -> str:
        where = f"endpoint {_safe_url(self.base_url)}" if self.base_url else "provider "
        if not self.base_url:
            where += self.provider
        return f"hf backend (model {self.model}, {where})"

    def token_limit(self, max_tokens: int) -> int:
        """The limit sent for a reply budget of ``max_tokens`` (room to think when hosted)."""
        return max_tokens + REASONING_ROOM_TOKENS if self.hosted else max_tokens

    def advice(self, kind: str) -> str:
        if kind == MODEL_UNAVAILABLE:
            if not self.hosted:
                return _served_by(self.base_url)
            example = "" if self.model == DEFAULT_MODEL else f", e.g. {DEFAULT_MODEL}"
            return (
                f"set ANIM_PLANNER_MODEL to a model that Inference Providers serve{example} "
                "(https://huggingface.co/models?inference_provider=all&other=conversational), "
                "or enable a provider that serves it at "
                "https://huggingface.co/settings/inference-providers"
            )
        if kind == AUTH:
            if not self.hosted:
                return "set ANIM_PLANNER_API_KEY (or HF_TOKEN) to a key the server accepts"
            return (
                "set HF_TOKEN (or ANIM_PLANNER_API_KEY, which overrides it) to a fine-grained "
                "token with the 'Make calls to Inference Providers' permission"
            )
        if kind == NO_CREDITS:
            return (
                "add credits to the Hugging Face account, or plan with another ANIM_PLANNER_BACKEND"
            )
        return ""

    def chat(
        self, messages: Sequence[Message], *, max_tokens: int, notes: list[str] | None = None
    ) -> str:
        noted = notes if notes is not None else []

        def once() -> Any:
            return self._sending(lambda: self._call(messages, max_tokens), self._token, noted)

        out = _with_retries(once, self.retry, self.describe())
        try:
            choice = out.choices[0]
            content = choice.message.content
        except (AttributeError, IndexError, TypeError):
            raise LLMError(f"{self.describe()}: the answer has no choices[0].message") from None
        limit = self.token_limit(max_tokens)
        return _finished(content or "", choice.finish_reason, limit, self.describe(), noted)

    def _call(self, messages: Sequence[Message], max_tokens: int) -> Any:
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError

        sent = {"model", "messages", "max_tokens"} | (set(self.optional) - self._left_out)
        started = time.monotonic()
        try:
            return self._client.chat_completion(
                [dict(m) for m in messages],
                model=self.model,
                max_tokens=self.token_limit(max_tokens),
                temperature=None if "temperature" in self._left_out else TEMPERATURE,
                response_format=(
                    None if "response_format" in self._left_out else {"type": "json_object"}
                ),
            )
        except InferenceTimeoutError:
            raise LLMTimeout(f"{self.describe()}: no answer within {self.timeout_s:g} s") from None
        except HfHubHTTPError as exc:
            response = getattr(exc, "response", None)
            status = getattr(response, "status_code", 0) or 0
            if response is None:
                raise LLMError(f"{self.describe()}: {exc}", REQUEST_REFUSED) from None
            headers = getattr(response, "headers", {}) or {}
            err = parse_error(status, response.content)
            raise _classified(err, sent, headers.get("Retry-After")) from None
        except httpx2.TimeoutException:
            raise LLMTimeout(f"{self.describe()}: no answer within {self.timeout_s:g} s") from None
        except httpx2.TransportError as exc:
            if time.monotonic() - started >= self.timeout_s:
                raise LLMTimeout(
                    f"{self.describe()}: no answer within {self.timeout_s:g} s"
                ) from None
            raise _Retryable(f"cannot reach the server: {exc}", kind=UNREACHABLE) from None


# ---------------------------------------------------------------------------
# local: a transformers causal LM on this machine
# ---------------------------------------------------------------------------


def _plain_transcript(messages: Sequence[Message]) -> str:
    """A conversation as text, for models without a chat template."""
    lines = [f"### {m['role'].capitalize()}:\n{m['content']}\n" for m in messages]
    return "\n".join(lines) + "\n### Assistant:\n"


class LocalBackend:
    """A text-generation model run with transformers (greedy decoding, deterministic)."""

    name = "local"

    def __init__(
        self,
        model_ref: str,
        *,
        settings: Any = None,
        timeout_s: float = 60.0,
    ) -> None:
        if not model_ref:
            raise ValueError(
                "ANIM_PLANNER_LOCAL_MODEL: required when ANIM_PLANNER_BACKEND=local "
                "(a hub id or a folder under ANIM_MODEL_ROOTS)"
            )
        self.model = model_ref
        self.timeout_s = timeout_s
        self._settings = settings
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any, str] | None = None

    def describe(self) -> str:
        return f"local backend (model {self.model})"

    def _load(self) -> tuple[Any, Any, str]:
        if self._loaded is not None:
            return self._loaded
        # torch and the model load here, on first use, never when the planner starts.
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        # Load notes and progress bars are noise in a service log (errors still show).
        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        try:
            path = model_refs.locate(self.model, self._settings, field="ANIM_PLANNER_LOCAL_MODEL")
        except ValueError as exc:
            raise LLMError(f"{self.describe()}: {exc}") from None
        device = self._setting("ANIM_DEVICE", "auto")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype_name = self._setting("ANIM_DTYPE", "auto")
        if dtype_name == "auto":
            dtype = torch.float16 if device == "cuda" else torch.float32
        else:
            dtype = getattr(torch, dtype_name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        except (OSError, ValueError) as exc:
            raise LLMError(f"{self.describe()}: cannot load the model: {exc}") from None
        model.eval()
        self._loaded = (tokenizer, model, device)
        return self._loaded

    def _setting(self, name: str, default: str) -> str:
        if self._settings is None:
            return default
        return self._settings[name]

    def _prompt(self, tokenizer: Any, messages: Sequence[Message]) -> str:
        msgs = [dict(m) for m in messages]
        if not getattr(tokenizer, "chat_template", None):
            return _plain_transcript(msgs)
        try:
            return tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        except Exception:  # jinja raises its own TemplateError subclasses
            # Some templates refuse a system role: fold it into the first user message.
            if msgs and msgs[0]["role"] == "system" and len(msgs) > 1:
                system = msgs.pop(0)["content"]
                msgs[0] = {**msgs[0], "content": f"{system}\n\n{msgs[0]['content']}"}
                return tokenizer.apply_chat_template(
                    msgs, add_generation_prompt=True, tokenize=False
                )
            raise

    def chat(
        self, messages: Sequence[Message], *, max_tokens: int, notes: list[str] | None = None
    ) -> str:
        with self._lock:  # one generation at a time: the model is shared
            tokenizer, model, device = self._load()
            import torch

            text = self._prompt(tokenizer, messages)
            enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
            n_in = int(enc["input_ids"].shape[1])
            context = getattr(model.config, "max_position_embeddings", None)
            new_tokens = max_tokens
            if context:
                new_tokens = min(max_tokens, int(context) - n_in)
                if new_tokens < 1:
                    raise LLMError(
                        f"{self.describe()}: the conversation has {n_in} tokens, "
                        f"the model's context is {context}"
                    )
            pad = tokenizer.pad_token_id
            if pad is None:
                pad = tokenizer.eos_token_id
            started = time.monotonic()
            with torch.inference_mode():
                out = model.generate(
                    **{k: v.to(device) for k, v in enc.items()},
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    max_time=self.timeout_s,  # generation stops at the call's time limit
                    pad_token_id=pad,
                )
            if time.monotonic() - started > self.timeout_s * 1.5:
                raise LLMTimeout(f"{self.describe()}: no answer within {self.timeout_s:g} s")
            return tokenizer.decode(out[0, n_in:], skip_special_tokens=True)


__all__ = [
    "DEFAULT_MODEL",
    "REASONING_ROOM_TOKENS",
    "ChatBackend",
    "HFBackend",
    "LLMError",
    "LLMTimeout",
    "LocalBackend",
    "Message",
    "OpenAIBackend",
    "RetryPolicy",
    "ServerError",
    "classify",
    "parse_error",
    "refused_field",
]

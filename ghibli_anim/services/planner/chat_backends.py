"""Chat backends of the storyboard planner: hf, openai and local.

Each backend turns a conversation (a list of ``{"role", "content"}`` messages) into the
assistant's reply text, and nothing more: prompting, parsing and repairs live in
:mod:`ghibli_anim.services.planner.storyboard_llm`. Calls are blocking (the planner runs them in a
worker thread) and bounded:

* every request has a time limit (``ANIM_PLANNER_TIMEOUT_S``); one that runs past it raises
  :class:`LLMTimeout` and is not retried (a hung server rarely recovers within a job's time);
* an answer 429 or 5xx, or a server that cannot be reached, is retried
  ``ANIM_PLANNER_RETRIES`` times with exponential backoff (``Retry-After`` is honoured, capped);
* any other failure raises :class:`LLMError` naming the backend, model and endpoint.

Backends:

* ``hf``: ``huggingface_hub.InferenceClient(...).chat_completion`` with ``ANIM_PLANNER_MODEL``
  (default ``mistralai/Mistral-7B-Instruct-v0.3``) through ``ANIM_PLANNER_PROVIDER``, or through
  the endpoint ``ANIM_PLANNER_BASE_URL`` (a dedicated endpoint, a TGI server).
* ``openai``: any OpenAI-compatible ``/chat/completions`` server (vLLM, TGI, llama.cpp,
  Ollama) by ``ANIM_PLANNER_BASE_URL``, over plain HTTP from the standard library.
* ``local``: a transformers causal language model (``ANIM_PLANNER_LOCAL_MODEL``, a hub id or a
  folder under ``ANIM_MODEL_ROOTS``) with its chat template. torch is imported only when this
  backend loads its model, so the planner starts without torch with every other backend.

hf and openai ask for a JSON object (``response_format``); a server that refuses the option
with 400 or 422 is asked again without it, and is not asked with it again.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ghibli_anim.contracts import model_refs
from ghibli_anim.runtime.retry import RetryError, with_backoff

log = logging.getLogger(__name__)

DEFAULT_MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
# Low temperature: the reply must be strict JSON, and repairs should converge.
TEMPERATURE = 0.3
# Longest backoff between two tries, and the most a Retry-After header may ask for.
MAX_BACKOFF_S = 30.0
# A reply larger than this is not a storyboard (the schema caps one at 64 KiB).
MAX_REPLY_BYTES = 4 * 1024 * 1024

Message = dict[str, str]
T = TypeVar("T")


class LLMError(RuntimeError):
    """A chat call failed; the message names the backend, the model and the endpoint."""


class LLMTimeout(LLMError):
    """A chat call ran past its time limit."""


class _Retryable(Exception):
    """A failure worth another try (429, 5xx, unreachable server)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class _RejectsJsonMode(Exception):
    """The server refused ``response_format`` (400/422 with it set)."""


class ChatBackend(Protocol):
    """What the storyboarder needs from a backend."""

    name: str
    """``hf``, ``openai`` or ``local``."""
    model: str

    def describe(self) -> str:
        """Backend, model and endpoint, for errors and records (no secrets)."""
        ...

    def chat(self, messages: Sequence[Message], *, max_tokens: int) -> str:
        """The assistant's reply to ``messages``; raises LLMError or LLMTimeout."""
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
        raise LLMError(f"{what}: {last.exception()} (after {last.attempt_number} tries)") from None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (only the delta-seconds form; dates are ignored)."""
    if not value:
        return None
    try:
        return float(value.strip())
    except ValueError:
        return None


def _is_retryable_status(status: int) -> bool:
    return status == 429 or 500 <= status <= 599


def _safe_url(url: str) -> str:
    """The URL without user info, query or fragment (safe to log and record)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _reply_text(data: Any, what: str) -> str:
    """``choices[0].message.content`` of a chat-completions answer."""
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise LLMError(f"{what}: the answer has no choices[0].message.content") from None
    if content is None:
        return ""
    if not isinstance(content, str):
        raise LLMError(f"{what}: choices[0].message.content is not text")
    return content


def _error_detail(body: bytes) -> str:
    """The server's own error message, if it gave one, shortened."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
        if isinstance(data, dict):
            err = data.get("error", data.get("detail", data.get("message", text)))
            if isinstance(err, dict):
                err = err.get("message", err)
            text = str(err)
    except json.JSONDecodeError:
        pass
    return " ".join(text.split())[:300]


# ---------------------------------------------------------------------------
# openai: any OpenAI-compatible chat-completions server, standard library HTTP
# ---------------------------------------------------------------------------


class OpenAIBackend:
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
        self._json_mode = True  # until the server refuses response_format
        self._url = urlsplit(self.base_url + "/chat/completions")

    def describe(self) -> str:
        return f"openai backend (model {self.model}, server {_safe_url(self.base_url)})"

    def chat(self, messages: Sequence[Message], *, max_tokens: int) -> str:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in messages],
            "max_tokens": max_tokens,
            "temperature": TEMPERATURE,
            "stream": False,
        }

        def once() -> dict[str, Any]:
            deadline = time.monotonic() + self.timeout_s  # per request, like the hf client's
            body = dict(payload)
            if self._json_mode:
                body["response_format"] = {"type": "json_object"}
            try:
                return self._post(body, deadline)
            except _RejectsJsonMode:
                # Older servers (and some llama.cpp builds) reject the option: ask again without.
                log.info("chat server refused response_format; asking without it")
                self._json_mode = False
                return self._post(payload, deadline)

        data = _with_retries(once, self.retry, self.describe())
        return _reply_text(data, self.describe())

    def _post(self, body: dict[str, Any], deadline: float) -> dict[str, Any]:
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
            raise _Retryable(f"cannot reach the server: {exc}") from None
        finally:
            conn.close()
        data = b"".join(chunks)
        status = resp.status
        if status >= 400:
            detail = _error_detail(data)
            if _is_retryable_status(status):
                raise _Retryable(
                    f"HTTP {status}: {detail}", _retry_after(resp.getheader("Retry-After"))
                )
            if status in (400, 422) and "response_format" in body:
                raise _RejectsJsonMode()
            raise LLMError(f"{self.describe()}: HTTP {status}: {detail}")
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise LLMError(f"{self.describe()}: the answer is not JSON") from None


# ---------------------------------------------------------------------------
# hf: huggingface_hub.InferenceClient
# ---------------------------------------------------------------------------


class HFBackend:
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
        self._json_mode = True
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

    def chat(self, messages: Sequence[Message], *, max_tokens: int) -> str:
        def once() -> Any:
            try:
                return self._call(messages, max_tokens, json_mode=self._json_mode)
            except _RejectsJsonMode:
                log.info("inference server refused response_format; asking without it")
                self._json_mode = False
                return self._call(messages, max_tokens, json_mode=False)

        out = _with_retries(once, self.retry, self.describe())
        try:
            content = out.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            raise LLMError(f"{self.describe()}: the answer has no choices[0].message") from None
        return content or ""

    def _call(self, messages: Sequence[Message], max_tokens: int, *, json_mode: bool) -> Any:
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError

        started = time.monotonic()
        try:
            return self._client.chat_completion(
                [dict(m) for m in messages],
                model=self.model,
                max_tokens=max_tokens,
                temperature=TEMPERATURE,
                response_format={"type": "json_object"} if json_mode else None,
            )
        except InferenceTimeoutError:
            raise LLMTimeout(f"{self.describe()}: no answer within {self.timeout_s:g} s") from None
        except HfHubHTTPError as exc:
            response = getattr(exc, "response", None)
            status = getattr(response, "status_code", 0) or 0
            detail = _error_detail(response.content) if response is not None else str(exc)
            if _is_retryable_status(status):
                headers = getattr(response, "headers", {}) or {}
                raise _Retryable(
                    f"HTTP {status}: {detail}", _retry_after(headers.get("Retry-After"))
                ) from None
            if status in (400, 422) and json_mode:
                raise _RejectsJsonMode() from None
            raise LLMError(f"{self.describe()}: HTTP {status}: {detail}") from None
        except httpx2.TimeoutException:
            raise LLMTimeout(f"{self.describe()}: no answer within {self.timeout_s:g} s") from None
        except httpx2.TransportError as exc:
            if time.monotonic() - started >= self.timeout_s:
                raise LLMTimeout(
                    f"{self.describe()}: no answer within {self.timeout_s:g} s"
                ) from None
            raise _Retryable(f"cannot reach the server: {exc}") from None


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

    def chat(self, messages: Sequence[Message], *, max_tokens: int) -> str:
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
    "ChatBackend",
    "HFBackend",
    "LLMError",
    "LLMTimeout",
    "LocalBackend",
    "Message",
    "OpenAIBackend",
    "RetryPolicy",
]

"""gRPC access: bearer tokens, TLS and mTLS, and the caller's identity.

Tokens live in a file (``ANIM_AUTH_TOKENS_FILE``, e.g. a mounted Secret), one
per line as ``CLIENT_ID:TOKEN`` (``#`` comments allowed). When the file is set,
every call but health and reflection needs ``authorization: Bearer TOKEN``;
tokens are compared in constant time, and the matching client id becomes the
caller's identity (it scopes idempotency keys and the per-client job cap).
Without the file, the API is open and every caller is the client ``anonymous``.
"""

from __future__ import annotations

import contextvars
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

import grpc

from ghibli_anim.runtime.grpcserver import rewrap_handler

ANONYMOUS = "anonymous"
_CLIENT_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Probes and tooling stay reachable without a token.
OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

current_client: contextvars.ContextVar[str] = contextvars.ContextVar(
    "current_client", default=ANONYMOUS
)


class AuthConfigError(ValueError):
    """The tokens file is unreadable or malformed (the message names the line)."""


@dataclass(frozen=True)
class Tokens:
    by_client: dict[str, bytes]

    @classmethod
    def load(cls, path: Path) -> Tokens:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise AuthConfigError(f"ANIM_AUTH_TOKENS_FILE: cannot read {path}: {exc}") from None
        by_client: dict[str, bytes] = {}
        for n, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            client, sep, token = line.partition(":")
            if not sep or not _CLIENT_RE.match(client) or len(token) < 16:
                # Never echo the line: it holds a secret.
                raise AuthConfigError(
                    f"ANIM_AUTH_TOKENS_FILE: line {n} must be CLIENT_ID:TOKEN with a client id "
                    "of letters, digits, '.', '_' or '-' and a token of at least 16 characters"
                )
            by_client[client] = token.encode()
        if not by_client:
            raise AuthConfigError(f"ANIM_AUTH_TOKENS_FILE: {path} holds no token")
        return cls(by_client)

    def client_of(self, token: str) -> str | None:
        """The client id of a presented token, or None (constant time per entry)."""
        presented = token.encode()
        found = None
        for client, expected in self.by_client.items():
            if hmac.compare_digest(presented, expected):
                found = client
        return found


def bearer(metadata) -> str:
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return ""


def _wrap(handler: grpc.RpcMethodHandler, client: str) -> grpc.RpcMethodHandler:
    """The same handler, running with ``current_client`` set to ``client``."""

    def unary(fn):
        async def call(request, context):
            token = current_client.set(client)
            try:
                return await fn(request, context)
            finally:
                current_client.reset(token)

        return call

    def streaming(fn):
        async def call(request, context):
            # No reset: a stream the client drops is closed from another context, where
            # the reset token is invalid; the call's context ends with its task anyway.
            current_client.set(client)
            async for item in fn(request, context):
                yield item

        return call

    return rewrap_handler(handler, unary, streaming)


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape that refuses the call."""

    async def abort(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def abort_stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - abort raises

    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort_stream)
    return grpc.unary_unary_rpc_method_handler(abort)


class BearerAuth(grpc.aio.ServerInterceptor):
    """Refuses calls without a known token; sets ``current_client`` for the handler."""

    def __init__(self, tokens: Tokens | None) -> None:
        self.tokens = tokens

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        if self.tokens is None:
            return _wrap(handler, ANONYMOUS)
        token = bearer(details.invocation_metadata)
        if not token:
            return _deny(handler, "authorization: a bearer token is required")
        client = self.tokens.client_of(token)
        if client is None:
            return _deny(handler, "authorization: the token is not valid")
        return _wrap(handler, client)


def server_credentials(cert: str, key: str, client_ca: str) -> grpc.ServerCredentials | None:
    """TLS from certificate paths; mTLS (client certificates required) with a CA."""
    if not cert and not key:
        return None
    if not (cert and key):
        raise AuthConfigError("ANIM_TLS_CERT/ANIM_TLS_KEY: set both or neither")
    try:
        pair = (Path(key).read_bytes(), Path(cert).read_bytes())
        ca = Path(client_ca).read_bytes() if client_ca else None
    except OSError as exc:
        raise AuthConfigError(f"ANIM_TLS_*: cannot read a certificate file: {exc}") from None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=bool(ca))

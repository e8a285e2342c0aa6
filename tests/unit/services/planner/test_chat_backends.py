"""services/planner/chat_backends.py: retries, back-off, timeouts, response_format, errors
that name the model and provider and say what to set, parameters left out or swapped when a
server refuses them, and the local backend (a tiny random GPT-2 built in the test: it writes
gibberish, which exercises rejection and repair, not the happy path).

Hosted LLM APIs cannot be reached from the tests: the openai and hf backends talk to a local
stand-in server (``support/llm_server.py``) that speaks their protocol and replays the error
answers the hosted APIs send (``support/llm_errors.py``)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import llm_errors as errors
from support.llm_planner import IDEA, INJECTION, LLM_BACKENDS, STYLE, backend, plan
from support.llm_server import (
    ChatServer,
    Error,
    Hang,
    Refuse,
    RejectResponseFormat,
    Reply,
    Status,
    storyboard,
    valid_reply,
)

from ghibli_anim.contracts import config
from ghibli_anim.services.planner.chat_backends import (
    AUTH,
    DEFAULT_MODEL,
    JSON_MODE_REFUSED,
    MAX_BACKOFF_S,
    MODEL_UNAVAILABLE,
    NO_CREDITS,
    PARAMETER_REFUSED,
    RATE_LIMITED,
    REASONING_ROOM_TOKENS,
    REQUEST_REFUSED,
    SERVER_ERROR,
    TRUNCATED,
    HFBackend,
    LLMTimeout,
    LocalBackend,
    OpenAIBackend,
    ServerError,
    classify,
    parse_error,
    refused_field,
)
from ghibli_anim.services.planner.storyboard_llm import (
    PlanningFailed,
    Storyboarder,
    max_reply_tokens,
)

# -- transport: retries, timeouts, response_format ------------------------------------------


@pytest.mark.parametrize("kind", LLM_BACKENDS)
@pytest.mark.parametrize("code", [429, 503])
def test_rate_limit_or_server_error_is_retried(kind, code, counter):
    with ChatServer([Status(code, "slow down"), valid_reply]) as server:
        out = plan(kind, server, counter)
    assert len(server.requests) == 2 and len(out.board.frames) == 5
    assert len(out.attempts) == 1  # a retried call is one attempt


def test_retry_after_is_honoured(counter):
    with ChatServer([Status(429, headers={"Retry-After": "1"}), valid_reply]) as server:
        started = time.monotonic()
        plan("openai", server, counter)
    assert time.monotonic() - started >= 1.0


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """The retry waits, recorded instead of slept (retries sleep through time.sleep)."""
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    return slept


def test_retry_after_is_capped(counter, waits):
    with ChatServer([Status(429, headers={"Retry-After": "3600"}), valid_reply]) as server:
        plan("openai", server, counter)
    assert waits == [MAX_BACKOFF_S] and len(server.requests) == 2


@pytest.mark.parametrize("kind", LLM_BACKENDS)
def test_backoff_doubles_and_each_retry_is_logged(kind, counter, waits, caplog):
    script = [Status(503, "busy"), Status(503, "busy"), valid_reply]
    with ChatServer(script) as server, caplog.at_level(logging.WARNING):
        plan(kind, server, counter)
    # backend() sets backoff_s=0.05: 0.05 s, then 0.1 s, each with at most 10% jitter.
    assert len(waits) == 2, waits
    assert 0.05 <= waits[0] <= 0.055 and 0.1 <= waits[1] <= 0.11
    logged = [r for r in caplog.records if r.name.endswith("planner.chat_backends")]
    assert [r.wait_s for r in logged] == [round(w, 2) for w in waits]
    for record in logged:
        assert record.levelno == logging.WARNING
        assert record.backend.startswith(f"{kind} backend (model {DEFAULT_MODEL}")
        assert record.error == "HTTP 503: busy"


@pytest.mark.parametrize("kind", LLM_BACKENDS)
def test_retries_are_bounded(kind, counter):
    with (
        ChatServer([Status(500, "boom")]) as server,
        pytest.raises(PlanningFailed, match=r"HTTP 500: boom \(after 3 tries\)") as info,
    ):
        plan(kind, server, counter)
    assert len(server.requests) == 3
    (attempt,) = info.value.attempts
    assert not attempt["accepted"] and "HTTP 500" in attempt["errors"][0]


@pytest.mark.parametrize("kind", LLM_BACKENDS)
def test_a_hang_times_out_within_the_bound(kind, counter):
    with ChatServer([Hang(60)]) as server:
        started = time.monotonic()
        out = plan(kind, server, counter, timeout_s=1.0, fallback="offline")
        elapsed = time.monotonic() - started
    assert elapsed < 5.0, elapsed  # 1 s limit, not retried; generous for a loaded machine
    assert len(server.requests) == 1
    assert out.backend == "offline" and len(out.board.frames) == 5
    assert "no answer within 1 s" in out.notice


def test_timeout_is_an_error_of_its_own():
    with ChatServer([Hang(60)]) as server, pytest.raises(LLMTimeout, match=r"within 0\.5 s"):
        OpenAIBackend(server.base_url, timeout_s=0.5).chat(
            [{"role": "user", "content": "hi"}], max_tokens=8
        )


@pytest.mark.parametrize("kind", LLM_BACKENDS)
def test_server_without_response_format_is_asked_plainly(kind, counter):
    with ChatServer([RejectResponseFormat(valid_reply)]) as server:
        sb = Storyboarder(backend(kind, server), repairs=0, fallback="fail")
        sb.plan(IDEA, 3, style=STYLE, counter=counter)
        sb.plan(IDEA, 3, style=STYLE, counter=counter)
    assert ["response_format" in b for b in server.bodies] == [True, False, False]


def test_unauthorised_is_not_retried_and_names_model_and_provider(counter):
    with ChatServer([Status(401, "invalid key")]) as server, pytest.raises(PlanningFailed) as info:
        plan("hf", server, counter)
    assert len(server.requests) == 1
    assert str(info.value) == (
        f"the hf backend (model {DEFAULT_MODEL}, endpoint {server.base_url}): the key was refused "
        "(HTTP 401: invalid key); set ANIM_PLANNER_API_KEY (or HF_TOKEN) to a key the server "
        "accepts"
    )


def test_hf_backend_names_its_provider(counter):
    hf = HFBackend("owner/model", provider="together", token="hf_x")
    assert hf.describe() == "hf backend (model owner/model, provider together)"
    # A provider the client does not know fails before any request: a clean planning error.
    unknown = HFBackend("owner/model", provider="no-such-provider", token="hf_x")
    with pytest.raises(PlanningFailed) as info:
        Storyboarder(unknown, fallback="fail").plan(IDEA, 2, style=STYLE, counter=counter)
    assert str(info.value).startswith(
        "the hf backend (model owner/model, provider no-such-provider): ValueError: "
    )
    assert "not supported" in str(info.value)


# -- refusals: the hosted APIs' own error answers (support/llm_errors.py) ---------------------

MISTRAL = "mistralai/Mistral-7B-Instruct-v0.3"


@pytest.mark.parametrize(
    ("kind", "answer"),
    [
        ("hf", errors.hf_model_not_supported(MISTRAL)),
        ("hf", errors.hf_model_not_supported_text(MISTRAL)),
        ("hf", errors.HF_MODEL_NOT_BY_PROVIDER),
        ("openai", errors.openai_model_not_found(MISTRAL)),
    ],
)
@pytest.mark.parametrize("fallback", ["fail", "offline"])
def test_a_model_the_server_does_not_serve_is_named_not_taken_for_json_mode(
    kind, answer, fallback, counter
):
    with ChatServer([Error(answer), valid_reply]) as server:
        if fallback == "fail":
            with pytest.raises(PlanningFailed) as info:
                plan(kind, server, counter, model=MISTRAL, fallback=fallback)
            reason, attempts = str(info.value), info.value.attempts
        else:
            out = plan(kind, server, counter, model=MISTRAL, fallback=fallback)
            reason, attempts = out.notice, out.attempts
            assert out.backend == "offline" and len(out.board.frames) == 5
            assert reason.endswith("; the offline planner wrote the storyboard instead")
    # One request: not retried, and not asked again without response_format.
    assert len(server.requests) == 1 and "response_format" in server.bodies[0]
    message = parse_error(answer.status, json.dumps(answer.body).encode()).message
    assert reason.startswith(
        f"the {kind} backend (model {MISTRAL}, "
        + ("endpoint" if kind == "hf" else "server")
        + f" {server.base_url}): the model is not available (HTTP {answer.status}: {message}); "
        f"set ANIM_PLANNER_MODEL to a model the server at {server.base_url} serves"
    )
    assert attempts[0]["error_kind"] == MODEL_UNAVAILABLE and not attempts[0]["accepted"]


def test_hf_on_inference_providers_suggests_a_served_model_and_the_provider_settings():
    advice = HFBackend(MISTRAL, token="hf_x").advice(MODEL_UNAVAILABLE)
    assert advice == (
        f"set ANIM_PLANNER_MODEL to a model that Inference Providers serve, e.g. {DEFAULT_MODEL} "
        "(https://huggingface.co/models?inference_provider=all&other=conversational), or enable "
        "a provider that serves it at https://huggingface.co/settings/inference-providers"
    )
    # The router's own URL is Inference Providers too; the default needs no example of itself.
    router = HFBackend(base_url="https://router.huggingface.co/v1", token="hf_x")
    assert router.advice(MODEL_UNAVAILABLE).startswith(
        "set ANIM_PLANNER_MODEL to a model that Inference Providers serve (https://"
    )
    assert "'Make calls to Inference Providers' permission" in router.advice(AUTH)
    openai = OpenAIBackend("https://api.openai.com/v1", "o3")
    assert openai.advice(MODEL_UNAVAILABLE) == (
        "set ANIM_PLANNER_MODEL to a model your key can use, e.g. gpt-5-mini"
    )


def test_the_default_model_is_the_configured_one():
    assert config.load("client", {})["ANIM_PLANNER_MODEL"] == DEFAULT_MODEL
    assert DEFAULT_MODEL == "openai/gpt-oss-20b"


@pytest.mark.parametrize(
    ("kind", "answer", "kind_of_error", "advice"),
    [
        ("hf", errors.HF_INVALID_TOKEN, AUTH, "set ANIM_PLANNER_API_KEY (or HF_TOKEN)"),
        ("hf", errors.HF_TOKEN_WITHOUT_PERMISSION, AUTH, "set ANIM_PLANNER_API_KEY (or HF_TOKEN)"),
        ("openai", errors.openai_invalid_key("sk-test"), AUTH, "set ANIM_PLANNER_API_KEY"),
        ("openai", errors.openai_invalid_key("sk-inval***c66a"), AUTH, "set ANIM_PLANNER_API_KEY"),
        ("hf", errors.HF_NO_CREDITS, NO_CREDITS, "add credits to the Hugging Face account"),
        ("openai", errors.OPENAI_NO_QUOTA, NO_CREDITS, "add credits to the account"),
    ],
)
def test_keys_and_credits_are_not_retried_and_say_what_to_set(
    kind, answer, kind_of_error, advice, counter, waits
):
    with ChatServer([Error(answer), valid_reply]) as server, pytest.raises(PlanningFailed) as info:
        plan(kind, server, counter)
    # A 429 for quota is not waited on: waiting does not add credits.
    assert len(server.requests) == 1 and waits == []
    (attempt,) = info.value.attempts
    assert attempt["error_kind"] == kind_of_error
    what = "the key was refused" if kind_of_error == AUTH else "the account is out of credits"
    assert f"): {what}" in str(info.value) and f"; {advice}" in str(info.value)
    # The key the server echoed, whole or masked, is not repeated in the reason or the records.
    for shown in ("sk-test", "sk-inval", "c66a"):
        assert shown not in str(info.value) and shown not in json.dumps(attempt)


@pytest.mark.parametrize("kind", LLM_BACKENDS)
@pytest.mark.parametrize(
    "answer", [errors.openai_temperature_value(0.3), errors.OPENAI_TEMPERATURE_PARAMETER]
)
def test_a_refused_temperature_is_left_out_once_and_recorded(kind, answer, counter):
    script = [Refuse("temperature", answer, valid_reply)]
    with ChatServer(script) as server:
        sb = Storyboarder(backend(kind, server), repairs=0, fallback="fail")
        first = sb.plan(IDEA, 3, style=STYLE, counter=counter)
        second = sb.plan(IDEA, 3, style=STYLE, counter=counter)
    assert ["temperature" in b for b in server.bodies] == [True, False, False]
    # Only temperature went: JSON mode stays on.
    assert all(b["response_format"] == {"type": "json_object"} for b in server.bodies)
    (attempt,) = first.attempts
    assert attempt["accepted"] and first.backend == kind
    message = parse_error(400, json.dumps(answer.body).encode()).message
    assert attempt["notes"] == [
        f"the server refused temperature (HTTP 400: {message}); asked again without it"
    ]
    assert second.attempts[0]["notes"] == []  # remembered: not refused again


def test_openai_api_gets_max_completion_tokens_with_room_to_think():
    msgs = [{"role": "user", "content": "hi"}]
    body = OpenAIBackend("https://api.openai.com/v1", "gpt-5-mini").request_body(
        msgs, max_tokens=500
    )
    assert body["max_completion_tokens"] == 500 + REASONING_ROOM_TOKENS
    assert "max_tokens" not in body
    # Other servers get max_tokens, the reply's budget alone (some refuse a limit past their
    # context).
    local = OpenAIBackend("http://127.0.0.1:1/v1").request_body(msgs, max_tokens=500)
    assert local["max_tokens"] == 500 and "max_completion_tokens" not in local


def test_a_server_refusing_max_tokens_gets_max_completion_tokens(counter):
    # An OpenAI reasoning model behind a proxy: refuses max_tokens, then temperature.
    script = [
        Refuse(
            "max_tokens",
            errors.OPENAI_MAX_TOKENS,
            Refuse("temperature", errors.openai_temperature_value(0.3), valid_reply),
        )
    ]
    with ChatServer(script) as server:
        sb = Storyboarder(backend("openai", server), repairs=0, fallback="fail")
        out = sb.plan(IDEA, 3, style=STYLE, counter=counter)
        sb.plan(IDEA, 3, style=STYLE, counter=counter)
    budget = max_reply_tokens(3)
    sent = [
        (b.get("max_tokens"), b.get("max_completion_tokens"), "temperature" in b)
        for b in server.bodies
    ]
    assert sent == [
        (budget, None, True),
        (None, budget, True),
        (None, budget, False),
        (None, budget, False),  # the next plan asks the way that worked
    ]
    notes = out.attempts[0]["notes"]
    assert len(notes) == 2
    assert notes[0].startswith("the server refused max_tokens (HTTP 400: Unsupported parameter:")
    assert notes[0].endswith("asked again with max_completion_tokens")
    assert notes[1].startswith("the server refused temperature (HTTP 400: Unsupported value:")


def test_a_refusal_of_what_was_already_left_out_is_the_error(counter):
    # A server that refuses every request naming temperature, even without it (a broken proxy).
    answer = errors.openai_temperature_value(0.3)
    with ChatServer([Error(answer)]) as server, pytest.raises(PlanningFailed) as info:
        plan("openai", server, counter)
    assert ["temperature" in b for b in server.bodies] == [True, False]
    assert "the server refused the request (HTTP 400: Unsupported value: " in str(info.value)
    assert info.value.attempts[0]["error_kind"] == REQUEST_REFUSED


@pytest.mark.parametrize("kind", LLM_BACKENDS)
def test_a_reply_cut_before_any_text_is_an_error_not_a_repair(kind, counter):
    # A reasoning model that spent the whole limit thinking.
    with (
        ChatServer([Reply("", finish_reason="length")]) as server,
        pytest.raises(PlanningFailed) as info,
    ):
        plan(kind, server, counter, frames=2)
    assert len(server.requests) == 1
    assert f"the reply reached the limit of {max_reply_tokens(2)} tokens before any text" in str(
        info.value
    )
    assert info.value.attempts[0]["error_kind"] == TRUNCATED


def test_a_reply_cut_after_some_text_is_noted_and_repaired(counter):
    cut = json.dumps(storyboard(2))[:40]
    with ChatServer([Reply(cut, finish_reason="length"), valid_reply]) as server:
        out = plan("openai", server, counter, frames=2)
    first, second = out.attempts
    assert first["notes"] == [f"the reply was cut at the limit of {max_reply_tokens(2)} tokens"]
    assert not first["accepted"] and second["accepted"] and second["notes"] == []


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (errors.hf_model_not_supported(MISTRAL), MODEL_UNAVAILABLE),
        (errors.hf_model_not_supported_text(MISTRAL), MODEL_UNAVAILABLE),
        (errors.HF_MODEL_NOT_BY_PROVIDER, MODEL_UNAVAILABLE),
        (errors.openai_model_not_found("gpt-x"), MODEL_UNAVAILABLE),
        (errors.HF_INVALID_TOKEN, AUTH),
        (errors.HF_TOKEN_WITHOUT_PERMISSION, AUTH),
        (errors.openai_invalid_key("sk-te***"), AUTH),
        (errors.HF_NO_CREDITS, NO_CREDITS),
        (errors.OPENAI_NO_QUOTA, NO_CREDITS),
        (errors.OPENAI_MAX_TOKENS, PARAMETER_REFUSED),
        (errors.openai_temperature_value(0.3), PARAMETER_REFUSED),
        (errors.OPENAI_TEMPERATURE_PARAMETER, PARAMETER_REFUSED),
    ],
)
def test_classify_the_recorded_answers(answer, kind):
    sent = ("model", "messages", "max_tokens", "temperature", "response_format", "stream")
    err = parse_error(answer.status, json.dumps(answer.body).encode())
    assert classify(err, sent) == kind
    if kind == PARAMETER_REFUSED:
        assert refused_field(err, sent) == answer.body["error"]["param"]


@pytest.mark.parametrize(
    ("status", "body", "sent", "kind"),
    [
        # Older servers refuse response_format without naming it: JSON mode off, as before.
        (400, {"error": {"message": "bad request"}}, ("response_format",), JSON_MODE_REFUSED),
        (422, {"error": "grammar is not supported"}, ("response_format",), JSON_MODE_REFUSED),
        (400, {"error": {"message": "bad request"}}, ("temperature",), REQUEST_REFUSED),
        # vLLM's shape (fields at the top level) and a 404 naming the model.
        (
            404,
            {"object": "error", "message": "The model `x` does not exist.", "code": 404},
            ("response_format",),
            MODEL_UNAVAILABLE,
        ),
        (429, {"error": {"message": "slow down"}}, (), RATE_LIMITED),
        (503, {"detail": "overloaded"}, (), SERVER_ERROR),
    ],
)
def test_classify_other_shapes(status, body, sent, kind):
    assert classify(parse_error(status, json.dumps(body).encode()), sent) == kind


def test_parse_error_reads_every_shape():
    assert parse_error(400, b'{"error": {"message": "a  b", "param": "p", "code": "c"}}') == (
        ServerError(400, "a b", code="c", param="p")
    )
    assert parse_error(401, b'{"error": "nope"}') == ServerError(401, "nope")
    assert parse_error(422, b'{"detail": [{"loc": ["x"]}]}').message == '[{"loc": ["x"]}]'
    assert parse_error(502, b"<html>Bad Gateway</html>").message == "<html>Bad Gateway</html>"
    assert len(parse_error(500, b"x" * 1000).message) == 300


# -- local backend: a tiny random GPT-2 -------------------------------------------------------


def _load(**env: str) -> config.Settings:
    return config.load(
        "planner", {"ANIM_NATS_URL": "nats://127.0.0.1:1", "ANIM_STORE": "local", **env}
    )


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A random GPT-2 with a byte-level vocabulary (no merges) and a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("models") / "tiny-gpt2"
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    eos = vocab["<|endoftext|>"]
    cfg = GPT2Config(
        vocab_size=len(vocab),
        n_positions=8192,  # byte tokens: the instructions alone are ~3000
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    return folder


def _local_settings(folder: Path, **env: str) -> config.Settings:
    return _load(
        ANIM_PLANNER_BACKEND="local",
        ANIM_PLANNER_LOCAL_MODEL=str(folder),
        ANIM_MODEL_ROOTS=str(folder.parent),
        ANIM_DEVICE="cpu",
        ANIM_PLANNER_REPAIRS="1",
        **env,
    )


@pytest.fixture(scope="module")
def local_backend(tiny_gpt2) -> Iterator[LocalBackend]:
    """One tiny GPT-2 backend for the module's tests, generating on one CPU thread.

    A model this small gains nothing from more threads, and on a shared, busy machine
    torch's spinning worker threads make it many times slower.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sb = Storyboarder.from_settings(_local_settings(tiny_gpt2))
    assert isinstance(sb.backend, LocalBackend) and sb.repairs == 1
    try:
        yield sb.backend
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("fallback", ["fail", "offline"])
def test_local_gibberish_is_rejected_repaired_and_ends_as_configured(
    local_backend, tiny_gpt2, fallback, counter
):
    sb = Storyboarder(local_backend, repairs=1, fallback=fallback)
    if fallback == "fail":
        with pytest.raises(PlanningFailed) as info:
            sb.plan(INJECTION, 1, style=STYLE, counter=counter)
        attempts = info.value.attempts
        assert (
            f"the local backend (model {tiny_gpt2}) gave no valid storyboard in 2 attempts"
            in str(info.value)
        )
    else:
        out = sb.plan(INJECTION, 1, style=STYLE, counter=counter)
        attempts = out.attempts
        assert out.backend == "offline" and len(out.board.frames) == 1
        assert attempts[-1]["backend"] == "offline"
    first, second = attempts[:2]
    assert first["backend"] == "local" and not first["accepted"] and first["errors"]
    assert not second["accepted"]
    # The repair carried the gibberish back with its errors, in the same conversation.
    assert second["messages"][2] == {"role": "assistant", "content": first["reply"]}
    assert first["errors"][0] in second["messages"][3]["content"]


def test_local_backend_is_deterministic_and_bounded(local_backend):
    msgs = [{"role": "system", "content": "rules"}, {"role": "user", "content": "a cat"}]
    one = local_backend.chat(msgs, max_tokens=40)
    assert one == local_backend.chat(msgs, max_tokens=40)
    # 40 byte-level tokens decode to at most 40 characters (or replacement marks).
    assert 0 < len(one) <= 40


def test_local_backend_reports_a_missing_model(tmp_path):
    local = LocalBackend(
        str(tmp_path / "nothing"), settings=_local_settings(tmp_path / "nothing"), timeout_s=5
    )
    with pytest.raises(Exception, match="does not exist"):
        local.chat([{"role": "user", "content": "x"}], max_tokens=4)

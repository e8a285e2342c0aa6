"""services/planner/chat_backends.py: retries, back-off, timeouts, response_format, errors
that name the model and provider, and the local backend (a tiny random GPT-2 built in the
test: it writes gibberish, which exercises rejection and repair, not the happy path).

The openai and hf backends talk to a local stand-in server (``support/llm_server.py``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.llm_planner import IDEA, INJECTION, LLM_BACKENDS, STYLE, backend, plan
from support.llm_server import ChatServer, Hang, RejectResponseFormat, Status, valid_reply

from ghibli_anim.contracts import config
from ghibli_anim.services.planner.chat_backends import (
    DEFAULT_MODEL,
    MAX_BACKOFF_S,
    HFBackend,
    LLMTimeout,
    LocalBackend,
    OpenAIBackend,
)
from ghibli_anim.services.planner.storyboard_llm import PlanningFailed, Storyboarder

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
        f"the hf backend (model {DEFAULT_MODEL}, endpoint {server.base_url}): HTTP 401: invalid key"
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

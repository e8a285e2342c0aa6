"""Expected failures end in one ``error:`` line, never a traceback: every command, every
way a user can make it fail (cli/main.py and cli/errors.py).

Each case runs ``python -m ghibli_anim.cli ...`` as a subprocess with its own HF_HOME and
ANIM_CACHE_DIR, HF_HUB_OFFLINE=1 (no network), and a closed loopback port wherever a
server is named; it must exit non-zero (2 for bad input, 1 for the rest), end stderr with
one line that names the problem, and print "Traceback" nowhere. Python start-up costs
about a second per case, so the cases run in parallel, once per module, each reported as
its own test.

The Hugging Face Hub is a hosted service: the gated and the missing repository talk to
:class:`HubErrors`, a local HTTP server that answers as the hub does for such
repositories (a status and an ``X-Error-Code`` header, from which huggingface_hub raises
GatedRepoError and RepositoryNotFoundError).

Read-only folders do not stop root: those cases are skipped when the tests run as root.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.server
import io
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.timeout(240)

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
FETCH_HINT = "`ghibli-anim models fetch PROFILE` on a connected machine"
SUBMIT = ("submit", "a cat", "--frames", "2", "--server", "127.0.0.1:{closed}")
UNREACHABLE_PLANNER = "is the planner running at 127.0.0.1:{closed}? (--server or ANIM_SERVER)"


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    """Arguments; ``{tmp}``, ``{closed}`` (a closed loopback port) are filled in."""
    expect: tuple[str, ...]
    """Texts the last line of stderr must hold (filled in like argv)."""
    status: int = 1
    env: dict[str, str | None] = field(default_factory=dict)
    """Variables to set (None: unset) over the base environment (filled in like argv)."""
    read_only: bool = False
    """Needs a read-only folder to refuse a write, which root ignores."""
    prefix: str = "error: "


CASES = [
    # plan
    Case(
        "plan-offline-tokenizer",
        ("plan", "a dragon", "--frames", "6", "--backend", "offline", "--profile", "sd15-ghibli"),
        ("profile.tokenizer: cannot fetch", "outgoing traffic has been disabled", FETCH_HINT),
    ),
    Case(
        "plan-bad-frames",
        ("plan", "a dragon", "--frames", "0", "--profile", "tiny"),
        ("frames: must be an integer in 1..120, got 0",),
        status=2,
    ),
    Case(
        "plan-unknown-profile",
        ("plan", "a dragon", "--frames", "2", "--profile", "nope"),
        ("profile: must be one of", "got 'nope'"),
        status=2,
    ),
    Case(
        "plan-bad-setting",
        ("plan", "a dragon", "--frames", "2", "--profile", "tiny"),
        ("ANIM_LOG_LEVEL: must be one of", "got 'LOUD'"),
        status=2,
        env={"ANIM_LOG_LEVEL": "LOUD"},
    ),
    Case(
        "plan-read-only-cache",
        ("plan", "a dragon", "--frames", "2", "--profile", "tiny"),
        ("permission denied: {tmp}/read-only/cache", "choose a folder you can write to"),
        env={"ANIM_CACHE_DIR": "{tmp}/read-only/cache"},
        read_only=True,
    ),
    # generate
    Case(
        "generate-offline-profile",
        ("generate", "a dragon", "--frames", "2", "--profile", "sd15-ghibli"),
        (
            "base_model (stable-diffusion-v1-5/stable-diffusion-v1-5): "
            "cannot list its files on the hub",
            FETCH_HINT,
        ),
    ),
    Case(
        "generate-bad-frames",
        ("generate", "a dragon", "--frames", "0", "--profile", "tiny"),
        ("frames: must be an integer in 1..120, got 0",),
        status=2,
    ),
    Case(
        "generate-missing-model-path",
        (
            "generate",
            "a dragon",
            "--frames",
            "2",
            "--profile",
            "tiny",
            "--base",
            "{tmp}/models/nope",
        ),
        ("base_model: path '{tmp}/models/nope' does not exist",),
        status=2,
    ),
    Case(
        "generate-model-outside-roots",
        ("generate", "a dragon", "--frames", "2", "--profile", "tiny", "--base", "{tmp}/elsewhere"),
        ("base_model: path '{tmp}/elsewhere' is outside ANIM_MODEL_ROOTS",),
        status=2,
    ),
    Case(
        "generate-lora-not-cached",
        ("generate", "a dragon", "--frames", "2", "--profile", "tiny", "--lora", "acme/style"),
        ("loras[0] (acme/style): cannot list its files on the hub", FETCH_HINT),
    ),
    Case(
        "generate-gated-lora",
        ("generate", "a dragon", "--frames", "2", "--profile", "tiny", "--lora", "acme/gated"),
        ("loras[0] (acme/gated): cannot list its files on the hub", "gated", "HF_TOKEN"),
        env={"HF_HUB_OFFLINE": None, "HF_ENDPOINT": "{hub}"},
    ),
    Case(
        "generate-missing-repository",
        ("generate", "a dragon", "--frames", "2", "--profile", "tiny", "--lora", "acme/missing"),
        ("loras[0] (acme/missing): cannot list its files on the hub", "check the model id"),
        env={"HF_HUB_OFFLINE": None, "HF_ENDPOINT": "{hub}"},
    ),
    Case(
        "generate-missing-init-image",
        ("generate", "a cat", "--frames", "2", "--profile", "tiny", "--init-image", "{tmp}/no.png"),
        ("--init-image: cannot read {tmp}/no.png (No such file or directory)",),
        status=2,
    ),
    Case(
        "generate-bad-init-image",
        (
            "generate",
            "a cat",
            "--frames",
            "2",
            "--profile",
            "tiny",
            "--init-image",
            "{tmp}/bad.png",
        ),
        ("--init-image: {tmp}/bad.png is not a PNG, JPEG or WebP image",),
        status=2,
    ),
    Case(
        "generate-missing-storyboard",
        ("generate", "a cat", "--frames", "2", "--profile", "tiny", "--plan", "{tmp}/no.json"),
        ("--plan: cannot read {tmp}/no.json (No such file or directory)",),
        status=2,
    ),
    Case(
        "generate-bad-manifest",
        ("generate", "--from-manifest", "{tmp}/bad.json"),
        ("--from-manifest: {tmp}/bad.json is not a valid manifest",),
        status=2,
    ),
    Case(
        "generate-read-only-out",
        ("generate", "a cat", "--frames", "2", "--profile", "tiny", "--out", "{tmp}/read-only/o"),
        ("permission denied: {tmp}/read-only/o",),
        read_only=True,
    ),
    # submit, status, list: a planner that does not answer
    Case(
        "submit-unreachable-planner",
        ("submit", "a dragon", "--frames", "2", "--server", "127.0.0.1:{closed}"),
        ("UNAVAILABLE", UNREACHABLE_PLANNER),
    ),
    Case(
        "status-unreachable-planner",
        ("status", "0" * 32),
        ("UNAVAILABLE", UNREACHABLE_PLANNER),
        env={"ANIM_SERVER": "127.0.0.1:{closed}"},
    ),
    Case(
        "approve-missing-plan",
        ("approve", "0" * 32, "--plan", "{tmp}/none.json", "--server", "127.0.0.1:{closed}"),
        ("--plan: cannot read {tmp}/none.json",),
        status=2,
    ),
    Case(
        "list-missing-tls-file",
        ("list", "--server", "127.0.0.1:{closed}"),
        ("ANIM_CLIENT_TLS_CA", "cannot read {tmp}/no.pem"),
        status=2,
        env={"ANIM_CLIENT_TLS_CA": "{tmp}/no.pem"},
    ),
    Case(
        "submit-missing-init-image",
        (*SUBMIT, "--init-image", "{tmp}/no.png"),
        ("--init-image: cannot read {tmp}/no.png",),
        status=2,
    ),
    Case(
        "fork-unreachable-planner",
        ("fork", "0" * 32, "--from-frame", "2", "--server", "127.0.0.1:{closed}"),
        ("UNAVAILABLE", UNREACHABLE_PLANNER),
    ),
    Case(
        "fork-bad-prompt-edit",
        ("fork", "0" * 32, "--from-frame", "2", "--prompt", "two:a heron"),
        ("--prompt: must be K:TEXT (a frame index and a prompt), got 'two:a heron'",),
        status=2,
        env={"ANIM_SERVER": "127.0.0.1:{closed}"},
    ),
    Case(
        "fork-missing-plan",
        ("fork", "0" * 32, "--from-frame", "2", "--plan", "{tmp}/no.json"),
        ("--plan: cannot read {tmp}/no.json",),
        status=2,
        env={"ANIM_SERVER": "127.0.0.1:{closed}"},
    ),
    Case(
        "extend-unreachable-planner",
        ("extend", "0" * 32, "--frames", "2", "--server", "127.0.0.1:{closed}"),
        ("UNAVAILABLE", UNREACHABLE_PLANNER),
    ),
    Case(
        "extend-bad-prompt-edit",
        ("extend", "0" * 32, "--frames", "2", "--prompt", "four:a heron"),
        ("--prompt: must be K:TEXT (a frame index and a prompt), got 'four:a heron'",),
        status=2,
        env={"ANIM_SERVER": "127.0.0.1:{closed}"},
    ),
    Case(
        "submit-read-only-out",
        (*SUBMIT, "--wait", "--out", "{tmp}/read-only/o"),
        ("permission denied: {tmp}/read-only/o",),
        read_only=True,
    ),
    # serve and probe
    Case(
        "probe-unreachable",
        ("probe", "--target", "127.0.0.1:{closed}", "--timeout", "2"),
        ("127.0.0.1:{closed}: no health answer (UNAVAILABLE)",),
        prefix="",
    ),
    Case(
        "probe-bad-timeout",
        ("probe", "--target", "127.0.0.1:{closed}", "--timeout", "0"),
        ("--timeout: must be > 0 seconds",),
        status=2,
    ),
    Case(
        "serve-missing-setting",
        ("serve", "renderer"),
        ("ANIM_NATS_URL: required for renderer but not set",),
        status=2,
    ),
    Case(
        "serve-web-port-taken",
        ("serve", "web"),
        ("ANIM_WEB_HOST/ANIM_WEB_PORT: cannot listen on 127.0.0.1:{taken}",),
        env={
            "ANIM_PLANNER_TARGET": "127.0.0.1:{closed}",
            "ANIM_WEB_HOST": "127.0.0.1",
            "ANIM_WEB_PORT": "{taken}",
        },
    ),
    # bus, store
    Case(
        "bus-init-unreachable",
        ("bus", "init", "--url", "nats://127.0.0.1:{closed}", "--timeout", "1"),
        ("ANIM_NATS_URL: no NATS server answered at nats://127.0.0.1:{closed} within 1 s",),
    ),
    Case(
        "bus-init-bad-timeout",
        ("bus", "init", "--timeout", "0"),
        ("--timeout: must be > 0 seconds, got 0",),
        status=2,
    ),
    Case(
        "store-init-unreachable",
        ("store", "init", "--timeout", "1"),
        ("S3 at 127.0.0.1:{closed} still failing", "is the S3 server running at ANIM_S3_ENDPOINT?"),
        env={
            "ANIM_S3_ENDPOINT": "127.0.0.1:{closed}",
            "ANIM_S3_ACCESS_KEY": "access-key-of-the-test",
            "ANIM_S3_SECRET_KEY": "secret-key-of-the-test",
        },
    ),
    Case(
        "store-init-missing-key",
        ("store", "init"),
        ("ANIM_S3_ACCESS_KEY: must not be empty",),
        status=2,
        env={"ANIM_S3_ENDPOINT": "127.0.0.1:{closed}"},
    ),
    # models
    Case(
        "models-fetch-offline",
        ("models", "fetch", "sd15-ghibli"),
        (
            "base_model (stable-diffusion-v1-5/stable-diffusion-v1-5): "
            "cannot list its files on the hub",
            FETCH_HINT,
        ),
    ),
    Case(
        "models-fetch-unknown-profile",
        ("models", "fetch", "nope"),
        ("profile: must be one of",),
        status=2,
    ),
    Case(
        "models-tiny-read-only",
        ("models", "tiny", "{tmp}/read-only/tiny"),
        ("permission denied: {tmp}/read-only/tiny",),
        read_only=True,
    ),
    # dataset, train-lora
    Case(
        "dataset-missing-folder",
        ("dataset", "build", "{tmp}/no-images", "--out", "{tmp}/ds", "--caption", "keep"),
        ("IMAGES_DIR: {tmp}/no-images is not a folder",),
        status=2,
    ),
    Case(
        "dataset-no-image",
        ("dataset", "build", "{tmp}/not-images", "--out", "{tmp}/ds", "--caption", "keep"),
        ("no usable image in {tmp}/not-images", "bad.png: not a PNG, JPEG or WebP image"),
        status=2,
    ),
    Case(
        "dataset-read-only-out",
        ("dataset", "build", "{tmp}/images", "--out", "{tmp}/read-only/ds", "--caption", "keep"),
        ("permission denied: {tmp}/read-only",),
        read_only=True,
    ),
    Case(
        "train-offline-dataset",
        ("train-lora", "--dataset", "acme/pictures", "--output", "{tmp}/lora", "--profile", "tiny"),
        ("--dataset: cannot load hub dataset acme/pictures", "OfflineModeIsEnabled"),
    ),
    Case(
        "train-bad-rank",
        ("train-lora", "--dataset", "{tmp}/images", "--output", "{tmp}/lora", "--rank", "0"),
        ("--rank: must be an integer in 1..256, got 0",),
        status=2,
    ),
    # up-local
    Case(
        "up-local-bad-replicas",
        ("up-local", "--replicas", "renderer=x"),
        ("--replicas: expected NAME=COUNT with COUNT >= 1, got 'renderer=x'",),
        status=2,
    ),
    Case(
        "up-local-read-only-dir",
        ("up-local", "--dir", "{tmp}/read-only/stack"),
        ("permission denied: {tmp}/read-only/stack",),
        read_only=True,
    ),
]


class HubErrors(http.server.ThreadingHTTPServer):
    """Answers every request as the Hugging Face Hub does for a gated repository
    (``acme/gated``: 403, ``X-Error-Code: GatedRepo``) or one that does not exist (404,
    ``X-Error-Code: RepoNotFound``)."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self) -> None:
                gated = "/acme/gated" in self.path
                body = b'{"error": "Access to this repository is restricted."}'
                self.send_response(403 if gated else 404)
                self.send_header("X-Error-Code", "GatedRepo" if gated else "RepoNotFound")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = answer

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANIM_", "HF_"))}
    env.update(
        HF_HOME=str(tmp / "hf"),
        HF_HUB_OFFLINE="1",
        ANIM_CACHE_DIR=str(tmp / "cache"),
        ANIM_RUNS_DIR=str(tmp / "runs"),
        ANIM_MODEL_ROOTS=str(tmp / "models"),
    )
    return env


def write_inputs(tmp: Path) -> None:
    (tmp / "models").mkdir()
    (tmp / "elsewhere").mkdir()
    (tmp / "bad.png").write_bytes(b"not an image at all")
    (tmp / "bad.json").write_text("{not json", encoding="utf-8")
    (tmp / "not-images").mkdir()
    (tmp / "not-images" / "bad.png").write_bytes(b"not an image at all")
    (tmp / "images").mkdir()
    png = io.BytesIO()
    Image.new("RGB", (96, 96), (200, 120, 40)).save(png, format="PNG")
    (tmp / "images" / "a.png").write_bytes(png.getvalue())
    (tmp / "images" / "a.txt").write_text("an orange square", encoding="utf-8")
    (tmp / "read-only").mkdir()
    (tmp / "read-only").chmod(0o500)


def run(case: Case, fill: dict[str, str], env: dict[str, str], cwd: Path):
    argv = [a.format(**fill) for a in case.argv]
    extra = {k: (v.format(**fill) if v is not None else None) for k, v in case.env.items()}
    full = {**env, **{k: v for k, v in extra.items() if v is not None}}
    for name in [k for k, v in extra.items() if v is None]:
        full.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "ghibli_anim.cli", *argv],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("no-tracebacks")
    write_inputs(folder)
    yield folder
    (folder / "read-only").chmod(0o700)  # so that the temporary folder can be removed


@pytest.fixture(scope="module")
def fill(tmp: Path) -> Iterator[dict[str, str]]:
    hub = HubErrors()
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    with hub, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield {
            "tmp": str(tmp),
            "closed": str(closed_port()),
            "taken": str(taken.getsockname()[1]),
            "hub": hub.url,
        }
        hub.shutdown()


@pytest.fixture(scope="module")
def results(tmp: Path, fill: dict[str, str]) -> dict[str, subprocess.CompletedProcess]:
    """Every case run once, four at a time."""
    env = base_env(tmp)
    todo = [c for c in CASES if not (c.read_only and IS_ROOT)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        done = pool.map(lambda c: (c.id, run(c, fill, env, tmp)), todo)
        return dict(done)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_an_expected_failure_is_one_line(case: Case, results, fill) -> None:
    if case.read_only and IS_ROOT:
        pytest.skip("runs as root, and a read-only folder does not stop root")
    done = results[case.id]
    both = done.stdout + done.stderr
    assert "Traceback" not in both, both[-4000:]
    assert done.returncode == case.status, both[-4000:]
    lines = done.stderr.strip().splitlines()
    assert lines, both
    last = lines[-1]
    assert last.startswith(case.prefix), last
    for text in case.expect:
        assert text.format(**fill) in last, last


def test_every_command_has_a_case() -> None:
    from ghibli_anim.cli.main import GROUPS

    commands = {name for group in GROUPS for name in group.COMMANDS}
    covered = {case.argv[0] for case in CASES} | {"serve"}
    # Commands that only print (config, limits) fail only when their reader goes away
    # (test_a_reader_gone_away_is_not_an_error); the rest talk to a planner exactly as
    # `status` does (no second case needed).
    untested = commands - covered - {"config", "limits", "watch", "cancel", "resume", "delete"}
    assert not untested, sorted(untested)


def test_serve_without_nats_waits_and_stops_on_sigterm(tmp: Path, fill: dict[str, str]) -> None:
    """A service waits for NATS (it may start first), says why on stderr, and SIGTERM
    still stops it cleanly while it waits."""
    env = {
        **base_env(tmp),
        "ANIM_NATS_URL": f"nats://127.0.0.1:{fill['closed']}",
        "ANIM_STORE": "local",
        "ANIM_LOG_FORMAT": "text",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ghibli_anim.cli", "serve", "planner"],
        env=env,
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # until the first failed connection is logged
            seen.append(line)
            if "nats error" in line:
                break
        assert any(f"127.0.0.1', {fill['closed']})" in line for line in seen), seen
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    assert "Traceback" not in "".join(seen) + rest
    assert "stopped before NATS answered" in rest


def test_a_reader_gone_away_is_not_an_error(tmp: Path) -> None:
    """``ghibli-anim limits | head -0``: exit 1, and nothing on stderr."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ghibli_anim.cli", "limits"],
            env=base_env(tmp),
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (1, "")

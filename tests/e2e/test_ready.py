"""What Ready means for the services that compute with torch (renderer, depth): the device
checked and the models of ANIM_PROFILE loaded. Until then their gRPC health reports
NOT_SERVING for readiness ("") while "liveness" answers SERVING; a device that is missing or
models that cannot load end the process with one line saying what is wrong and what to do.

Each service runs as `ghibli-anim serve NAME`, as a deployment runs it, against a real
nats-server and SeaweedFS (a LocalStack without services), on the tiny models. The load is
made long enough to watch with the ``load:-1:slow`` fault hook (runtime/faults.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.nvidia_smi import fake_nvidia_smi, without_nvidia_smi

from ghibli_anim.devtools.stack import LocalStack, ServiceProcess
from ghibli_anim.runtime import faults
from ghibli_anim.runtime.grpcserver import LIVENESS, NOT_SERVING, SERVING
from ghibli_anim.runtime.processes import free_port

pytestmark = pytest.mark.timeout(300)

WITH_MODELS = ("renderer", "depth")


@pytest.fixture(scope="module")
def infra(tmp_path_factory, tiny_cache_dir):
    """NATS (bus initialised) and SeaweedFS (bucket made), no service running."""
    env = {"ANIM_CACHE_DIR": str(tiny_cache_dir), "ANIM_PROFILE": "tiny", "OMP_NUM_THREADS": "1"}
    stack = LocalStack(tmp_path_factory.mktemp("ready"), services=(), env=env)
    stack.start()
    yield stack
    stack.stop()


def _status(target: str, service: str) -> int | None:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2.0
            )
        except grpc.RpcError:
            return None  # not listening yet
    return reply.status


class Watched(ServiceProcess):
    """``serve NAME`` whose start records every poll's (readiness, liveness), and the log
    as it was when readiness first answered SERVING."""

    def __init__(self, name: str, folder: Path, env: dict[str, str]) -> None:
        super().__init__(name, folder, env)
        self.seen: list[tuple[int | None, int | None]] = []
        self.log_when_ready = ""

    def _ready(self) -> bool:
        readiness = _status(self.target, "")
        self.seen.append((readiness, _status(self.target, LIVENESS)))
        if readiness == SERVING:
            self.log_when_ready = self.log_path.read_text()
            return True
        return False


def messages(log: str) -> list[dict]:
    """The JSON log records of a service's log (the launcher's own lines left out)."""
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("name", WITH_MODELS)
def test_ready_only_once_the_models_are_loaded(infra, tmp_path, name) -> None:
    proc = Watched(name, tmp_path / name, {**infra.env(), "ANIM_FAULT": "load:-1:slow"})
    try:
        proc.start(timeout=180)
        # Answering, alive, and still loading: not ready.
        assert (NOT_SERVING, SERVING) in proc.seen, proc.seen
        assert SERVING not in [readiness for readiness, _ in proc.seen[:-1]]
        records = messages(proc.log_when_ready)
        said = [r["msg"] for r in records]
        assert said.index("device checked") < said.index("grpc listening")
        assert said.index("grpc listening") < said.index("models loaded")
        assert said.index("models loaded") < said.index("service started")
        [loaded] = [r for r in records if r["msg"] == "models loaded"]
        assert loaded["profile"] == "tiny"
        assert loaded["device"] == "cpu"
        assert loaded["depth_model"] == "tiny:depth"  # the renderer's depth maps too
        assert loaded["seconds"] >= faults.SLOW_LOAD_S  # the slow load was waited for
    finally:
        proc.stop()


def test_without_preload_the_renderer_loads_nothing_at_start(infra, tmp_path) -> None:
    env = {**infra.env(), "ANIM_PRELOAD": "false", "ANIM_FAULT": "load:-1:slow"}
    proc = Watched("renderer", tmp_path / "renderer", env)
    try:
        proc.start(timeout=180)
        said = [r["msg"] for r in messages(proc.log_when_ready)]
        assert "device checked" in said  # the device is checked either way
        assert "models loaded" not in said
        assert "pipeline loaded" not in said
    finally:
        proc.stop()


@pytest.mark.parametrize("name", WITH_MODELS)
def test_models_that_were_not_fetched_end_the_process(infra, tmp_path, name) -> None:
    # The built-in profile's models come from the hub: offline, with an empty HF_HOME, none is
    # there, as on a node whose models volume was never filled.
    env = {
        **infra.env(),
        "ANIM_GRPC_HOST": "127.0.0.1",
        "ANIM_GRPC_PORT": "0",
        "ANIM_PROFILE": "sd15-ghibli",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "ghibli_anim.cli", "serve", name],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 1, done.stderr
    said = [r["msg"] for r in messages(done.stderr + done.stdout)]
    assert "grpc listening" in said  # it reached NATS and the store, and answered liveness,
    assert "service started" not in said  # but never took work nor reported ready
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {name} cannot load the models of profile 'sd15-ghibli': ")
    # Which model, and (where the library keeps it) the root cause, not only its summary.
    model = {"renderer": "stable-diffusion-v1-5/stable-diffusion-v1-5", "depth": "depth-anything"}
    assert model[name] in line
    if name == "renderer":
        assert "(cause: OfflineModeIsEnabled: " in line
    assert line.endswith(
        f"; fetch them into HF_HOME ({tmp_path / 'hf'}, read offline: HF_HUB_OFFLINE is set) "
        "before starting (`ghibli-anim models fetch sd15-ghibli --depth`, what the deploy "
        "files' models-fetch step runs), or correct the profile's model references"
    )


def _serve(name: str, cache_dir: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """``serve NAME`` on the tiny profile with a NATS URL where nothing listens."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANIM_")}
    env.update(
        {
            "ANIM_NATS_URL": f"nats://127.0.0.1:{free_port()}",
            "ANIM_STORE": "local",
            "ANIM_CACHE_DIR": str(cache_dir),
            "ANIM_PROFILE": "tiny",
            "OMP_NUM_THREADS": "1",
            **extra,
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "ghibli_anim.cli", "serve", name],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("name", WITH_MODELS)
def test_cuda_asked_for_on_a_machine_without_a_gpu_refuses_to_start(
    tmp_path, monkeypatch, tiny_cache_dir, name
) -> None:
    # Nothing listens at its NATS URL: the device is refused before NATS is waited for.
    without_nvidia_smi(tmp_path, monkeypatch)
    done = _serve(name, tiny_cache_dir, ANIM_DEVICE="cuda")
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {name} cannot serve on this machine: ANIM_DEVICE: cuda requested, but torch "
        "sees no CUDA device: nvidia-smi lists no GPU here; run on a machine with an NVIDIA "
        "GPU and its driver (in a container: the NVIDIA container runtime, with a GPU "
        "requested), or set ANIM_DEVICE=auto or cpu"
    )


def test_a_gpu_that_torch_cannot_use_is_named_with_the_fix(tmp_path, monkeypatch, tiny_cache_dir):
    # A stand-in nvidia-smi lists a GPU and its driver; this torch (a CPU build, like an image
    # built without CUDA) cannot use it.
    fake_nvidia_smi(tmp_path, monkeypatch, "535.104.05", (("NVIDIA L4", "8.9"),))
    done = _serve("renderer", tiny_cache_dir, ANIM_DEVICE="cuda")
    assert done.returncode == 1, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(
        "error: renderer cannot serve on this machine: ANIM_DEVICE: cuda requested, but torch "
        "sees no CUDA device: nvidia-smi lists NVIDIA L4 (sm_89, driver 535.104.05), but torch "
    )
    assert "is a CPU build" in line

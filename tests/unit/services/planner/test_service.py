"""services/planner/service.py: the planner imports and plans without torch."""

from __future__ import annotations

import os
import subprocess
import sys


def test_planner_starts_without_torch_with_an_llm_backend(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any import of torch fails\n"
        "from ghibli_anim.contracts import config, model_refs\n"
        "from ghibli_anim.contracts.profiles import load_profile\n"
        "from ghibli_anim.devtools import tiny_models\n"
        "model_refs.use_tiny_builder(tiny_models.write_tiny_models)  # as the CLI does\n"
        "from ghibli_anim.services.planner import service, plan_step\n"
        "from ghibli_anim.services.planner.storyboard_llm import Storyboarder\n"
        "from ghibli_anim.contracts.tokens import TokenCounter\n"
        "for b in ('openai', 'hf', 'offline'):\n"
        "    s = config.load('planner')\n"
        "    Storyboarder.from_settings(s, backend=b)\n"
        "c = TokenCounter.for_profile(load_profile('tiny', s), s)\n"
        "sb = Storyboarder.from_settings(s, 'offline')\n"
        "print(sb.plan('a cat', 2, style='x', counter=c).backend)\n"
    )
    env = {
        **os.environ,
        "ANIM_NATS_URL": "nats://127.0.0.1:1",
        "ANIM_STORE": "local",
        "ANIM_CACHE_DIR": str(tmp_path),
        "ANIM_PLANNER_BASE_URL": "http://127.0.0.1:9/v1",
        "HF_TOKEN": "hf_x",
    }
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "offline"

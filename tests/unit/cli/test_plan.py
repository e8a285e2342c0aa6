"""`ghibli-anim plan` (cli/plan.py): the storyboard as JSON or a table, the offline notice,
the fallback warning, clean failures."""

from __future__ import annotations

import json
import os

import pytest
from support.llm_planner import IDEA, INJECTION, STYLE
from support.llm_server import ChatServer, Reply, valid_reply

from ghibli_anim.cli import main as cli
from ghibli_anim.contracts import config
from ghibli_anim.contracts.storyboard import parse_storyboard


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> config.Settings:
    cache = tmp_path_factory.mktemp("cache")
    return config.load("client", {"ANIM_CACHE_DIR": str(cache), "ANIM_STORE": "local"})


@pytest.fixture
def plan_env(monkeypatch, settings):
    monkeypatch.setenv("ANIM_CACHE_DIR", str(settings["ANIM_CACHE_DIR"]))
    monkeypatch.setenv("ANIM_PROFILE", "tiny")
    for name in [n for n in os.environ if n.startswith("ANIM_PLANNER_")] + ["HF_TOKEN"]:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_plan_command_json_prints_only_the_storyboard(plan_env, capsys):
    with ChatServer([valid_reply]) as server:
        plan_env.setenv("ANIM_PLANNER_BASE_URL", server.base_url)
        rc = cli.main(["plan", IDEA, "--frames", "4", "--backend", "openai", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    board = parse_storyboard(out.out, 4)
    assert board.planner.backend == "openai" and board.style == STYLE
    assert server.bodies[0]["messages"][1]["content"].count(json.dumps(IDEA)) == 1


def test_plan_command_table_and_offline_notice(plan_env, capsys):
    rc = cli.main(["plan", IDEA, "--frames", "3", "--profile", "tiny"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "notice: offline planner" in out.err and "HF_TOKEN is not set" in out.err
    lines = out.out.splitlines()
    assert lines[0] == f"title    {IDEA[:1].upper() + IDEA[1:]}"
    assert lines[2] == "planner  offline"
    header = next(i for i, line in enumerate(lines) if line.startswith("#"))
    assert lines[header].split() == ["#", "continuity", "camera", "tokens", "prompt"]
    rows = lines[header + 1 :]
    assert len(rows) == 3 and all(r.rstrip().endswith(", ghibli style") for r in rows)


def test_plan_command_falls_back_with_a_warning(plan_env, capsys):
    with ChatServer([Reply("```json\n{not json}\n```")]) as server:
        plan_env.setenv("ANIM_PLANNER_BASE_URL", server.base_url)
        plan_env.setenv("ANIM_PLANNER_REPAIRS", "1")
        rc = cli.main(["plan", INJECTION, "--frames", "3", "--backend", "openai", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert len(server.requests) == 2
    assert "notice: the openai backend (model " in out.err
    assert "the offline planner wrote the storyboard instead" in out.err
    board = parse_storyboard(out.out, 3)
    assert board.planner.offline


def test_plan_command_fails_cleanly(plan_env, capsys):
    with ChatServer([Reply("no storyboard today")]) as server:
        plan_env.setenv("ANIM_PLANNER_BASE_URL", server.base_url)
        plan_env.setenv("ANIM_PLANNER_FALLBACK", "fail")
        plan_env.setenv("ANIM_PLANNER_REPAIRS", "0")
        rc = cli.main(["plan", IDEA, "--frames", "2", "--backend", "openai", "--json"])
    out = capsys.readouterr()
    assert rc == 1 and out.out == ""
    assert "error: planning: the openai backend" in out.err and "no JSON object found" in out.err
    rc = cli.main(["plan", IDEA, "--frames", "0"])
    assert rc == 2
    assert capsys.readouterr().err.strip() == "error: frames: must be an integer in 1..120, got 0"

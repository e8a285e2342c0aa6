"""contracts/config.py: required and malformed variables named, secrets masked, defaults."""

from __future__ import annotations

import pytest

from ghibli_anim.contracts import config


def test_missing_required_variable_is_named():
    with pytest.raises(config.ConfigError, match=r"^ANIM_NATS_URL: required for renderer"):
        config.load("renderer", {})


def test_s3_variables_required_only_for_the_s3_store():
    env = {"ANIM_NATS_URL": "nats://127.0.0.1:4222"}
    with pytest.raises(config.ConfigError, match=r"^ANIM_S3_ENDPOINT"):
        config.load("planner", env)
    settings = config.load("planner", {**env, "ANIM_STORE": "local"})
    assert settings["ANIM_STORE"] == "local"


@pytest.mark.parametrize(
    ("name", "value", "rule"),
    [
        ("ANIM_ACK_WAIT_S", "-1", "> 0"),
        ("ANIM_GRPC_PORT", "70000", "0..65535"),
        ("ANIM_STORE", "ftp", "s3, local"),
        ("ANIM_S3_SECURE", "maybe", "true or false"),
    ],
)
def test_malformed_variable_is_named(name, value, rule):
    env = {"ANIM_NATS_URL": "nats://x", "ANIM_STORE": "local", name: value}
    with pytest.raises(config.ConfigError) as info:
        config.load("renderer", env)
    assert str(info.value).startswith(f"{name}:")
    assert rule in str(info.value)


def test_secrets_are_masked_and_never_echoed():
    env = {"ANIM_NATS_URL": "x", "ANIM_S3_SECRET_KEY": "hunter2-very-secret"}
    rows = {name: shown for name, shown, _ in config.describe(env)}
    assert rows["ANIM_S3_SECRET_KEY"] == "***"
    assert "hunter2" not in config.markdown_table()


def test_default_grpc_ports_follow_the_design():
    env = {"ANIM_NATS_URL": "x", "ANIM_STORE": "local"}
    ports = {role: config.load(role, env).grpc_port() for role in config.GRPC_PORTS}
    assert ports == {"planner": 50051, "depth": 50052, "renderer": 50053, "assembler": 50054}
    assert config.load("planner", {**env, "ANIM_GRPC_PORT": "0"}).grpc_port() == 0


# -- metrics and traces ------------------------------------------------------


def test_metrics_port_and_collector_endpoint_are_declared_and_checked() -> None:
    base = {"ANIM_STORE": "local", "ANIM_NATS_URL": "nats://127.0.0.1:4222"}
    assert config.load("renderer", base)["ANIM_METRICS_PORT"] is None  # off by default
    assert config.load("renderer", {**base, "ANIM_METRICS_PORT": "0"})["ANIM_METRICS_PORT"] == 0
    assert (
        config.load("renderer", {**base, "ANIM_METRICS_PORT": "9090"})["ANIM_METRICS_PORT"] == 9090
    )
    with pytest.raises(
        config.ConfigError, match=r"^ANIM_METRICS_PORT: must be a port in 0\.\.65535"
    ):
        config.load("renderer", {**base, "ANIM_METRICS_PORT": "70000"})
    assert config.load("planner", base)["OTEL_EXPORTER_OTLP_ENDPOINT"] == ""
    endpoint = {**base, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}
    assert (
        config.load("planner", endpoint)["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector:4318"
    )
    with pytest.raises(config.ConfigError, match=r"^OTEL_EXPORTER_OTLP_ENDPOINT: must be an http"):
        config.load("planner", {**base, "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"})


# -- the storyboard planner ---------------------------------------------------


def _load(**env: str) -> config.Settings:
    return config.load(
        "planner", {"ANIM_NATS_URL": "nats://127.0.0.1:1", "ANIM_STORE": "local", **env}
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ANIM_PLANNER_FALLBACK", "maybe", "must be one of offline, fail"),
        ("ANIM_PLANNER_REPAIRS", "11", "must be an integer in 0..10"),
        ("ANIM_PLANNER_BASE_URL", "ftp://x", "must be an http:// or https:// URL"),
        ("ANIM_PLANNER_TIMEOUT_S", "0", "must be a number > 0"),
    ],
)
def test_planner_variables_are_checked(name, value, message):
    with pytest.raises(config.ConfigError, match=f"^{name}: {message}"):
        _load(**{name: value})

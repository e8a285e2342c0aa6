"""Model profiles: which models a job renders with, and their defaults.

A profile lives in ``profiles.toml`` beside this module, or in the file
``ANIM_PROFILES_FILE`` names, which replaces it. The planner copies the resolved
``types_pb2.Profile`` into every FrameSpec and work message, so workers never read
another process's profiles file. Each model in a profile is a reference of
:mod:`ghibli_anim.contracts.model_refs`. A request may override the base model, the
ControlNet and the LoRAs, and ask for the ``fast`` preset (:func:`resolve_profile`).

Nothing here imports torch: the planner resolves profiles without it.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from ghibli_anim.contracts import limits
from ghibli_anim.contracts.config import Settings
from ghibli_anim.contracts.model_refs import (
    SINGLE_FILE_SUFFIX,
    TINY_PREFIX,
    check_ref,
    default_tokenizer,
    is_single_file,
    refuse_pickle,
    settings_or_client,
)
from ghibli_anim.contracts.pb import types_pb2

# Canonical scheduler names; the renderer maps each to a diffusers class. (LMS is
# left out: diffusers needs scipy for it, which the renderer does not install.)
SCHEDULERS: tuple[str, ...] = (
    "DDIM",
    "PNDM",
    "DDPM",
    "Euler",
    "EulerA",
    "Heun",
    "DPM++",
    "DPM++ Karras",
    "UniPC",
    "LCM",
)

LORA_SCALE = limits.FloatRange(-2.0, 2.0)

_PROFILE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

_STR_FIELDS = (
    "base_model",
    "tokenizer",
    "controlnet",
    "depth_model",
    "tiny_autoencoder",
    "scheduler",
    "style",
    "negative_prompt",
)
_INT_FIELDS = {"width": limits.WIDTH, "height": limits.HEIGHT, "steps": limits.STEPS}
_FLOAT_FIELDS = {
    "guidance": limits.GUIDANCE,
    "strength": limits.STRENGTH,
    "controlnet_scale": limits.CONTROLNET_SCALE,
}
_REQUIRED = ("base_model", "scheduler", "width", "height", "steps", "guidance", "strength")
# "captioner" (a BLIP model for `dataset build`) stays in the file: work messages never need it.
# "config", "lcm_lora" and "taesd" are resolved at plan time into the Profile message
# (see resolve_profile): they stay in the file too.
_KNOWN = {
    *_STR_FIELDS,
    *_INT_FIELDS,
    *_FLOAT_FIELDS,
    "fps",
    "loras",
    "captioner",
    "config",
    "lcm_lora",
    "taesd",
}
DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-large"
_LORA_KEYS = {"source", "scale", "weight_name"}


def check_scheduler(value: str, field: str = "scheduler") -> str:
    """The canonical name of a scheduler; case, spaces, '-' and '_' are ignored."""

    def norm(text: str) -> str:
        return re.sub(r"[\s_-]", "", text).lower()

    wanted = norm(value)
    for name in SCHEDULERS:
        if norm(name) == wanted:
            return name
    raise ValueError(f"{field}: must be one of {', '.join(SCHEDULERS)}, got {value!r:.60}")


# ---------------------------------------------------------------------------
# The profiles file
# ---------------------------------------------------------------------------


def _read_file(settings: Settings) -> tuple[str, dict[str, Any]]:
    override = settings["ANIM_PROFILES_FILE"]
    if override:
        origin = str(Path(override).expanduser())
        try:
            text = Path(origin).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"ANIM_PROFILES_FILE: cannot read {origin} ({exc})") from None
    else:
        origin = "profiles.toml (built in)"
        text = resources.files("ghibli_anim.contracts").joinpath("profiles.toml").read_text("utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"ANIM_PROFILES_FILE: invalid TOML in {origin} ({exc})") from None
    profiles = data.get("profiles")
    if not isinstance(profiles, dict) or not profiles:
        raise ValueError(f"profiles: {origin} defines no [profiles.NAME] table")
    extra = sorted(set(data) - {"profiles"})
    if extra:
        raise ValueError(f"{extra[0]}: unknown top-level key in {origin} (only [profiles.NAME])")
    return origin, profiles


def _text(table: Mapping[str, Any], key: str, where: str) -> str:
    value = table[key]
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key}: must be a string, got {value!r:.60}")
    return value


def _lora(entry: Any, settings: Settings, where: str) -> types_pb2.LoraRef:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: must be a table {{source, scale, weight_name}}")
    unknown = sorted(set(entry) - _LORA_KEYS)
    if unknown:
        raise ValueError(
            f"{where}.{unknown[0]}: unknown field (allowed: source, scale, weight_name)"
        )
    if "source" not in entry:
        raise ValueError(f"{where}.source: required")
    source = _text(entry, "source", where)
    check_ref(source, settings, f"{where}.source", allow_store=True)
    scale = LORA_SCALE.check(f"{where}.scale", entry.get("scale", 1.0))
    weight_name = entry.get("weight_name", "")
    if not isinstance(weight_name, str) or "/" in weight_name or weight_name.startswith("."):
        raise ValueError(f"{where}.weight_name: must be a file name, got {weight_name!r:.60}")
    return types_pb2.LoraRef(source=source, scale=scale, weight_name=weight_name)


def _build(name: str, table: Any, settings: Settings) -> types_pb2.Profile:
    where = f"profiles.{name}"
    if not isinstance(table, dict):
        raise ValueError(f"{where}: must be a table")
    unknown = sorted(set(table) - _KNOWN)
    if unknown:
        raise ValueError(
            f"{where}.{unknown[0]}: unknown field (allowed: {', '.join(sorted(_KNOWN))})"
        )
    missing = [k for k in _REQUIRED if k not in table]
    if missing:
        raise ValueError(f"{where}.{missing[0]}: required")
    profile = types_pb2.Profile(name=name)
    for key in _STR_FIELDS:
        if key in table:
            setattr(profile, key, _text(table, key, where))
    for key, int_range in _INT_FIELDS.items():
        setattr(profile, key, int_range.check(f"{where}.{key}", table[key]))
    for key, float_range in _FLOAT_FIELDS.items():
        # Only controlnet_scale may be left out (required ones were checked above).
        setattr(profile, key, float_range.check(f"{where}.{key}", table.get(key, 1.0)))
    profile.fps = limits.FPS.check(f"{where}.fps", table.get("fps", 8))
    profile.scheduler = check_scheduler(profile.scheduler, f"{where}.scheduler")
    profile.style = limits.check_text(
        f"{where}.style", profile.style, limits.STYLE_CHARS, required=False
    )
    profile.negative_prompt = limits.check_text(
        f"{where}.negative_prompt",
        profile.negative_prompt,
        limits.NEGATIVE_PROMPT_CHARS,
        required=False,
    )
    check_ref(profile.base_model, settings, f"{where}.base_model")
    _check_base_config(profile, table, settings, where)
    if not profile.tokenizer:
        profile.tokenizer = default_tokenizer(profile.base_model)
    for key in ("tokenizer", "controlnet", "depth_model", "tiny_autoencoder"):
        if getattr(profile, key):
            check_ref(getattr(profile, key), settings, f"{where}.{key}")
    if "captioner" in table:
        check_ref(_text(table, "captioner", where), settings, f"{where}.captioner")
    for key in ("lcm_lora", "taesd"):
        if key in table:
            check_ref(_text(table, key, where), settings, f"{where}.{key}")
    loras = table.get("loras", [])
    if not isinstance(loras, list):
        raise ValueError(f"{where}.loras: must be a list of tables")
    profile.loras.extend(_lora(e, settings, f"{where}.loras[{i}]") for i, e in enumerate(loras))
    return profile


def profile_names(settings: Settings | None = None) -> list[str]:
    """Names of the profiles in the active file, in file order."""
    _, profiles = _read_file(settings_or_client(settings))
    return list(profiles)


def load_profile(name: str | None, settings: Settings | None = None) -> types_pb2.Profile:
    """The named profile, validated; ``None`` or ``""`` means ``ANIM_PROFILE``.

    Raises ValueError ``profile: must be one of A, B, got 'x'`` for an unknown
    name, and ``profiles.NAME.FIELD: ...`` for a bad entry in the file.
    """
    settings = settings_or_client(settings)
    if not name:
        name = settings["ANIM_PROFILE"]
    origin, profiles = _read_file(settings)
    if name not in profiles:
        raise ValueError(f"profile: must be one of {', '.join(profiles)}, got {name!r:.80}")
    if not _PROFILE_NAME_RE.match(name) or len(name) > limits.PROFILE_NAME_CHARS:
        raise ValueError(
            f"profile: names in {origin} must be 1-{limits.PROFILE_NAME_CHARS} characters "
            f"of a-z, 0-9, '.', '_' or '-', got {name!r:.80}"
        )
    return _build(name, profiles[name], settings)


def load_captioner(name: str | None, settings: Settings | None = None) -> str:
    """The captioning model (a BLIP) of a profile: its ``captioner``, else ``DEFAULT_CAPTIONER``.

    The whole profile is validated first, as ``load_profile`` does.
    """
    settings = settings_or_client(settings)
    profile = load_profile(name, settings)
    _, tables = _read_file(settings)
    return tables[profile.name].get("captioner", DEFAULT_CAPTIONER)


# ---------------------------------------------------------------------------
# Single-file checkpoints, request overrides and presets
# ---------------------------------------------------------------------------

DEFAULT_LCM_LORA = "latent-consistency/lcm-lora-sdv1-5"
DEFAULT_TAESD = "madebyollin/taesd"
PRESETS = ("", "fast")
# LCM-LoRA (the "fast" preset): 4 steps, low guidance (1 turns CFG off; above 2
# burns the image). img2img raises the steps so that at least one of them runs.
FAST_SCHEDULER = "LCM"
FAST_STEPS = 4
FAST_GUIDANCE = limits.FloatRange(1.0, 2.0)
FAST_DEFAULT_GUIDANCE = 1.5
MAX_LORAS = 8


def single_file_config(profile: types_pb2.Profile, field: str = "profile.tokenizer") -> str:
    """The diffusers config (folder, hub id or ``tiny:pipeline``) of a single-file base model.

    A single-file checkpoint holds weights only; ``from_single_file(path, config=...)``
    takes the component configs, scheduler and tokenizer from a diffusers folder of the
    same architecture. The profile's ``config`` names it, and the profile's tokenizer is
    that folder's ``tokenizer`` (the planner counts tokens with what the renderer uses),
    so the Profile message carries the config as ``CONFIG/tokenizer``.
    """
    tokenizer = profile.tokenizer
    if tokenizer == TINY_PREFIX + "tokenizer":
        return TINY_PREFIX + "pipeline"
    head, sep, tail = tokenizer.rstrip("/").rpartition("/")
    if sep and head and tail == "tokenizer":
        return head
    raise ValueError(
        f"{field}: a single-file base model takes its config from the tokenizer's folder "
        f"(CONFIG/tokenizer or tiny:tokenizer), got {tokenizer!r:.200}"
    )


def _check_config_ref(ref: str, settings: Settings | None, field: str) -> None:
    kind = check_ref(ref, settings, field)
    if kind == "hub" and ref.count("/") != 1:
        raise ValueError(f"{field}: a hub config must be owner/name, got {ref!r:.200}")
    if kind == "tiny" and ref != TINY_PREFIX + "pipeline":
        raise ValueError(f"{field}: the tiny config is {TINY_PREFIX}pipeline, got {ref!r:.60}")


def _check_base_config(
    profile: types_pb2.Profile, table: Mapping[str, Any], settings: Settings, where: str
) -> None:
    """The ``config`` of a single-file base model; sets the tokenizer to the config's."""
    config_ref = table.get("config", "")
    if not isinstance(config_ref, str):
        raise ValueError(f"{where}.config: must be a string, got {config_ref!r:.60}")
    refuse_pickle(profile.base_model, f"{where}.base_model")
    if not is_single_file(profile.base_model):
        if config_ref:
            raise ValueError(
                f"{where}.config: only for a base_model that is a single {SINGLE_FILE_SUFFIX} file"
            )
        return
    if not config_ref:
        raise ValueError(
            f"{where}.config: required for a single-file base_model: the diffusers folder or "
            "hub id of the same architecture (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5)"
        )
    _check_config_ref(config_ref, settings, f"{where}.config")
    expected = default_tokenizer(config_ref)
    if profile.tokenizer and profile.tokenizer != expected:
        raise ValueError(
            f"{where}.tokenizer: a single-file base_model uses its config's tokenizer "
            f"{expected!r}, got {profile.tokenizer!r:.200}"
        )
    profile.tokenizer = expected


def profile_option(name: str, key: str, settings: Settings | None = None) -> str:
    """A model the planner adds on request: ``lcm_lora`` (fast preset) or ``taesd``.

    Defaults: latent-consistency/lcm-lora-sdv1-5 and madebyollin/taesd (SD-1.5's).
    """
    defaults = {"lcm_lora": DEFAULT_LCM_LORA, "taesd": DEFAULT_TAESD}
    if key not in defaults:
        raise ValueError(f"key: must be one of {', '.join(defaults)}, got {key!r:.40}")
    settings = settings_or_client(settings)
    profile = load_profile(name, settings)  # validates the whole table first
    _, tables = _read_file(settings)
    return tables[profile.name].get(key, defaults[key])


def parse_lora_arg(text: str, settings: Settings | None, field: str) -> types_pb2.LoraRef:
    """``PATH_OR_ID[:SCALE]`` (also ``store://loras/NAME[:SCALE]``, ``tiny:lcm_lora``).

    The part after the last ':' is the scale when it is a number (default 1.0); a
    file inside a folder is given by its path. Raises ValueError naming ``field``.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{field}: must be PATH_OR_ID[:SCALE], got {text!r:.60}")
    source, scale = text.strip(), 1.0
    head, sep, tail = source.rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
        except ValueError:
            pass  # a colon of the reference itself (tiny:, store://)
        else:
            source = head
    scale = LORA_SCALE.check(f"{field} scale", scale)
    refuse_pickle(source, field)
    check_ref(source, settings, field, allow_store=True)
    return types_pb2.LoraRef(source=source, scale=scale)


def check_overrides(req: Any, settings: Settings | None = None) -> None:
    """Syntax and place of a request's model overrides (loras, base_model, controlnet,
    preset); errors name the request field. Nothing is downloaded or loaded."""
    if len(req.loras) > MAX_LORAS:
        raise ValueError(f"loras: at most {MAX_LORAS} LoRAs, got {len(req.loras)}")
    if req.base_model:
        refuse_pickle(req.base_model, "base_model")
        check_ref(req.base_model, settings, "base_model")
    seen: dict[str, int] = {}
    for i, text in enumerate(req.loras):
        source = parse_lora_arg(text, settings, f"loras[{i}]").source
        if source in seen:
            raise ValueError(f"loras[{i}]: {source!r:.200} is loras[{seen[source]}] already")
        seen[source] = i
    if req.controlnet:
        refuse_pickle(req.controlnet, "controlnet")
        check_ref(req.controlnet, settings, "controlnet")
    if req.preset not in PRESETS:
        raise ValueError(f"preset: must be empty (quality) or fast, got {req.preset!r:.40}")
    if req.preset == "fast" and req.HasField("guidance"):
        FAST_GUIDANCE.check("guidance (fast preset, LCM)", round(req.guidance, 6))


def resolve_profile(req: Any, settings: Settings | None = None) -> types_pb2.Profile:
    """The profile a CreateAnimationRequest renders with (what every FrameSpec carries).

    The named profile, then the request's overrides: ``base_model`` and ``controlnet``
    replace the profile's; ``loras`` (when given) replace the profile's LoRAs; preset
    ``fast`` adds the profile's ``lcm_lora`` at scale 1 after them and makes LCM, 4 steps
    and guidance 1.5 the defaults; ANIM_TINY_VAE swaps in the profile's ``taesd``.
    Raises ValueError naming the field.
    """
    settings = settings_or_client(settings)
    check_overrides(req, settings)
    profile = load_profile(req.profile, settings)
    if req.base_model:
        if is_single_file(req.base_model):
            # Same architecture as the profile's model: its folder is the config.
            if not is_single_file(profile.base_model):
                profile.tokenizer = default_tokenizer(profile.base_model)
            single_file_config(profile, field="base_model (its config comes from the profile)")
        else:
            profile.tokenizer = default_tokenizer(req.base_model)
        profile.base_model = req.base_model
    if req.controlnet:
        profile.controlnet = req.controlnet
    if req.loras:
        del profile.loras[:]
        profile.loras.extend(
            parse_lora_arg(text, settings, f"loras[{i}]") for i, text in enumerate(req.loras)
        )
    if req.preset == "fast":
        lcm = profile_option(profile.name, "lcm_lora", settings)
        if all(lo.source != lcm for lo in profile.loras):  # listed by the caller already
            profile.loras.append(types_pb2.LoraRef(source=lcm, scale=1.0))
        profile.scheduler = FAST_SCHEDULER
        profile.steps = FAST_STEPS
        profile.guidance = FAST_DEFAULT_GUIDANCE
    if settings["ANIM_TINY_VAE"] and not profile.tiny_autoencoder:
        profile.tiny_autoencoder = profile_option(profile.name, "taesd", settings)
    return profile

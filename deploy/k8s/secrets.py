"""Print the Kubernetes Secrets an overlay reads, made from a .env (``make .env``).

    python3 deploy/k8s/secrets.py OVERLAY [ENV_FILE] [--tokens FILE] | kubectl apply -f -

OVERLAY is dev or gpu (it names the namespace); ENV_FILE defaults to .env. The output
is YAML (stringData) for ``kubectl apply``; running it again with the same .env gives
the same Secrets, so it also updates them. Nothing is sent anywhere and no file is
written. The Secrets:

- ``ghibli-anim``: the .env values the workloads and NATS read (passwords, tokens).
- ``ghibli-anim-api-tokens``: key ``tokens``, the planner's bearer tokens
  (ANIM_AUTH_TOKENS_FILE): ``web:ANIM_CLIENT_TOKEN``, then the CLIENT_ID:TOKEN lines of
  ``--tokens FILE`` (one per further client: people, scripts).
- ``ghibli-anim-s3``: one S3 identity per service, ``SERVICE-access-key`` (the fixed
  user name ``ghibli-anim-SERVICE``) and ``SERVICE-secret-key``, derived from
  ANIM_S3_SECRET_KEY (HMAC-SHA256), so each differs and none reveals another.
- ``ghibli-anim-seaweedfs-s3``: key ``seaweedfs_s3_config``, SeaweedFS's identities: the
  root user (S3_ROOT_*) and the services' identities limited to their prefixes
  (deploy/s3/services.json). The dev overlay's SeaweedFS and the SeaweedFS chart read it.
- ``ghibli-anim-minio`` (gpu): the MinIO chart's root credentials (rootUser, rootPassword).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SERVICES_FILE = HERE.parent / "s3" / "services.json"
NAMESPACES = {"dev": "ghibli-anim-dev", "gpu": "ghibli-anim"}

ENV_KEYS = re.compile(r"^(NATS_[A-Z_]+_PASSWORD|HF_TOKEN|ANIM_PLANNER_API_KEY|ANIM_CLIENT_TOKEN)$")
"""The .env keys that go into the Secret ``ghibli-anim``."""
TOKEN = re.compile(r"^[A-Za-z0-9._-]{1,64}:.{16,}$")
"""A line of the tokens file (ghibli_anim/runtime/auth.py's rule)."""


class SecretsError(ValueError):
    """The .env or the tokens file lacks something (the message names it)."""


def read_env(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def s3_services() -> dict[str, Any]:
    return json.loads(SERVICES_FILE.read_text())


def access_key(service: str) -> str:
    return f"ghibli-anim-{service}"


def secret_key(env: dict[str, str], service: str) -> str:
    master = env.get("ANIM_S3_SECRET_KEY", "")
    if len(master) < 16:
        raise SecretsError("ANIM_S3_SECRET_KEY: set it in .env (make .env does), 16+ characters")
    digest = hmac.new(master.encode(), f"s3 identity {service}".encode(), hashlib.sha256)
    return "s" + digest.hexdigest()[:40]


def seaweedfs_actions(service: str) -> list[str]:
    """SeaweedFS identity actions (``Action:bucket/key-pattern``) for ``service``."""
    doc = s3_services()
    bucket, grants = doc["bucket"], doc["services"][service]
    actions = [f"Read:{bucket}/{p}" for p in grants["read"]]
    actions += [f"Write:{bucket}/{p}" for p in grants["write"]]
    if grants["list"]:
        actions.append(f"List:{bucket}")
    return actions


def minio_statements(service: str) -> list[dict[str, Any]]:
    """The MinIO (IAM) policy statements for ``service``: the same grants."""
    doc = s3_services()
    bucket, grants = doc["bucket"], doc["services"][service]
    arn = f"arn:aws:s3:::{bucket}"
    bucket_actions = ["s3:GetBucketLocation"] + (["s3:ListBucket"] if grants["list"] else [])
    statements = [{"effect": "Allow", "resources": [arn], "actions": bucket_actions}]
    statements.append(
        {
            "effect": "Allow",
            "resources": [f"{arn}/{p}" for p in grants["read"]],
            "actions": ["s3:GetObject"],
        }
    )
    statements.append(
        {
            "effect": "Allow",
            "resources": [f"{arn}/{p}" for p in grants["write"]],
            "actions": [
                "s3:PutObject",
                "s3:DeleteObject",
                "s3:AbortMultipartUpload",
                "s3:ListMultipartUploadParts",
            ],
        }
    )
    return statements


def seaweedfs_identities(env: dict[str, str]) -> dict[str, Any]:
    for key in ("S3_ROOT_USER", "S3_ROOT_PASSWORD"):
        if not env.get(key):
            raise SecretsError(f"{key}: set it in .env (make .env does)")
    identities = [
        {
            "name": "admin",
            "credentials": [
                {"accessKey": env["S3_ROOT_USER"], "secretKey": env["S3_ROOT_PASSWORD"]}
            ],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
    ]
    for service in s3_services()["services"]:
        identities.append(
            {
                "name": access_key(service),
                "credentials": [
                    {"accessKey": access_key(service), "secretKey": secret_key(env, service)}
                ],
                "actions": seaweedfs_actions(service),
            }
        )
    return {"identities": identities}


def api_tokens(env: dict[str, str], extra: str = "") -> str:
    token = env.get("ANIM_CLIENT_TOKEN", "")
    if len(token) < 16:
        raise SecretsError(
            "ANIM_CLIENT_TOKEN: set it in .env (16+ characters): the web page's bearer "
            "token for the planner's API"
        )
    lines = [f"web:{token}"]
    for n, raw in enumerate(extra.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not TOKEN.match(line):
            raise SecretsError(
                f"--tokens: line {n} must be CLIENT_ID:TOKEN (client id of letters, digits, "
                "'.', '_' or '-'; token of 16+ characters)"
            )
        lines.append(line)
    return "\n".join(lines) + "\n"


def secrets(overlay: str, env: dict[str, str], extra_tokens: str = "") -> list[dict[str, Any]]:
    """The Secrets (as objects) for ``overlay``'s namespace."""
    if overlay not in NAMESPACES:
        raise SecretsError(f"overlay: must be one of {', '.join(NAMESPACES)}, got {overlay!r}")
    namespace = NAMESPACES[overlay]

    def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/part-of": "ghibli-anim"},
            },
            "type": "Opaque",
            "stringData": data,
        }

    main = {k: v for k, v in env.items() if ENV_KEYS.match(k)}
    missing = [k for k, v in main.items() if k.startswith("NATS_") and not v]
    if missing:
        raise SecretsError(f"{missing[0]}: set it in .env (make .env does)")
    s3 = {}
    for service in s3_services()["services"]:
        s3[f"{service}-access-key"] = access_key(service)
        s3[f"{service}-secret-key"] = secret_key(env, service)
    out = [
        secret("ghibli-anim", main),
        secret("ghibli-anim-api-tokens", {"tokens": api_tokens(env, extra_tokens)}),
        secret("ghibli-anim-s3", s3),
        secret(
            "ghibli-anim-seaweedfs-s3",
            {"seaweedfs_s3_config": json.dumps(seaweedfs_identities(env), indent=2)},
        ),
    ]
    if overlay == "gpu":
        out.append(
            secret(
                "ghibli-anim-minio",
                {"rootUser": env["S3_ROOT_USER"], "rootPassword": env["S3_ROOT_PASSWORD"]},
            )
        )
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overlay", help="dev or gpu")
    parser.add_argument("env_file", nargs="?", default=".env", type=Path)
    parser.add_argument("--tokens", type=Path, help="more CLIENT_ID:TOKEN lines for the planner")
    args = parser.parse_args(argv)
    try:
        env = read_env(args.env_file.read_text(encoding="utf-8"))
        extra = args.tokens.read_text(encoding="utf-8") if args.tokens else ""
        docs = secrets(args.overlay, env, extra)
    except (OSError, SecretsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # JSON is YAML: kubectl reads this stream as it is, without a YAML library here.
    sys.stdout.write("".join(f"---\n{json.dumps(doc, indent=2)}\n" for doc in docs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

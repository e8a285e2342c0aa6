"""Generated parts of README.md and ARCHITECTURE.md.

Each file holds marker comments around each generated block
(``<!-- generated:NAME:start -->`` ... ``<!-- generated:NAME:end -->``); ``make docs``
rewrites the blocks from the code that defines them (configuration, limits, the bus's
names and topology, events, store keys, the job lifecycle, the modules' docstrings), and
a test fails when a file drifted from the code.

    python -m ghibli_anim.devtools.docs [--check]
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ghibli_anim.contracts import config, events, keys, lifecycle, limits
from ghibli_anim.runtime.bus import names, topology

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = REPO_ROOT / "ghibli_anim"

LAYERS: tuple[tuple[str, str], ...] = (
    ("cli", "entry point: the `ghibli-anim` command"),
    ("embedded", "entry point: every service in one process"),
    ("services", "the services; none imports another"),
    ("runtime", "what every service runs on"),
    ("contracts", "what every part agrees on"),
)
"""The layers, top to bottom (pyproject.toml's import contracts enforce them)."""


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# README.md
# ---------------------------------------------------------------------------


def limits_table() -> str:
    return _table(("field", "allowed"), ((f"`{n}`", a) for n, a in limits.table()))


# ---------------------------------------------------------------------------
# ARCHITECTURE.md
# ---------------------------------------------------------------------------


def _first_line(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    line = doc.strip().splitlines()[0] if doc.strip() else ""
    return line.replace("|", "\\|")


def _modules(layer: str) -> list[Path]:
    """The hand-written modules of a layer (generated protobuf code left out)."""
    single = PACKAGE / f"{layer}.py"
    if single.is_file():
        return [single]
    root = PACKAGE / layer
    return sorted(
        path
        for path in root.rglob("*.py")
        if "pb" not in path.relative_to(root).parts
        and path.name != "__main__.py"
        and not (path.name == "__init__.py" and (path.parent == root or not _first_line(path)))
    )


def modules_table() -> str:
    """Every hand-written module with the first line of its docstring, layer by layer."""
    rows = []
    for layer, _ in (*LAYERS, ("devtools", "")):
        for n, path in enumerate(_modules(layer)):
            shown = path.relative_to(REPO_ROOT).as_posix()
            if path.name == "__init__.py":
                shown = shown.removesuffix("__init__.py")
            rows.append((f"`{layer}`" if n == 0 else "", f"`{shown}`", _first_line(path)))
    return _table(("layer", "module", "what it is"), rows)


def layers_table() -> str:
    return _table(("layer", "folder", "holds"), ((n, f"`ghibli_anim/{n}`", r) for n, r in LAYERS))


def ports_table() -> str:
    grpc = "gRPC (`grpc.health.v1`, reflection)"
    rows: list[tuple[object, ...]] = [
        (name, port, grpc) for name, port in config.GRPC_PORTS.items()
    ]
    rows.append(("web", config.WEB_PORT, "HTTP (the page, `/healthz`, `/readyz`)"))
    rows.append(("any", "`ANIM_METRICS_PORT`", "HTTP `/metrics` (Prometheus), off unless set"))
    return _table(("service", "port", "serves"), rows)


def streams_table() -> str:
    rows = []
    for stream in topology.stream_configs():
        retention = str(stream.retention.value if stream.retention else "")
        rows.append(
            (
                f"`{stream.name}`",
                ", ".join(f"`{s}`" for s in stream.subjects or []),
                retention,
                stream.description or "",
            )
        )
    return _table(("stream", "subjects", "retention", "what"), rows)


def durables_table() -> str:
    rows = []
    for stream, consumer in topology.consumer_configs(ack_wait_s=30, max_deliver=5):
        filters = consumer.filter_subjects or [consumer.filter_subject]
        rows.append(
            (
                f"`{consumer.durable_name}`",
                f"`{stream}`",
                "<br>".join(f"`{f}`" for f in filters),
                names.BOUND_BY[consumer.durable_name or ""],
            )
        )
    return _table(("durable", "stream", "filter", "bound by"), rows)


def buckets_table() -> str:
    def age(bucket: topology.Bucket) -> str:
        return f"{bucket.max_age_s / 3600:g} h" if bucket.max_age_s else "none"

    rows = ((f"`{b.name}`", b.history, age(b), b.description) for b in topology.BUCKETS)
    return _table(("bucket", "history", "max age", "holds"), rows)


def events_table() -> str:
    rows = []
    for value, name in events.EVENT_NAMES.items():
        rows.append(
            (
                f"`{name}`",
                f"`{names.EVENT_PREFIX}.{name}.<job_id>`",
                events.EMITTED_BY[value],
                "yes" if value in names.CONDUCTOR_EVENTS else "",
            )
        )
    return _table(("event", "subject", "published by", "conductor acts on it"), rows)


def keys_table() -> str:
    rows = ((f"`{k.pattern.replace(':04d', '')}`", k.writer, k.when) for k in keys.LAYOUT)
    return _table(("key", "written by", "when"), rows)


def states_table() -> str:
    rows = []
    for status in lifecycle.STATUSES:
        targets = sorted(lifecycle.TRANSITIONS[status])
        rows.append(
            (
                f"`{lifecycle.status_name(status)}`",
                ", ".join(f"`{lifecycle.status_name(t)}`" for t in targets) or "none (final)",
                "yes" if status in lifecycle.TERMINAL else "",
            )
        )
    return _table(("status", "may become", "finished"), rows)


def states_diagram() -> str:
    lines = ["```mermaid", "stateDiagram-v2", "    [*] --> PENDING"]
    for status in lifecycle.STATUSES:
        for target in sorted(lifecycle.TRANSITIONS[status]):
            label = " : resume" if status in lifecycle.RESUMABLE else ""
            lines.append(
                f"    {lifecycle.status_name(status)} --> {lifecycle.status_name(target)}{label}"
            )
    lines.append("    COMPLETED --> [*]")
    lines.append("```")
    return "\n".join(lines)


FILES: dict[str, dict[str, Callable[[], str]]] = {
    "README.md": {"config": config.markdown_table, "limits": limits_table},
    "ARCHITECTURE.md": {
        "layers": layers_table,
        "modules": modules_table,
        "ports": ports_table,
        "streams": streams_table,
        "durables": durables_table,
        "buckets": buckets_table,
        "events": events_table,
        "keys": keys_table,
        "states": states_table,
        "states-diagram": states_diagram,
    },
}
"""The generated blocks of each file, by name."""


def render(text: str, blocks: dict[str, Callable[[], str]]) -> str:
    """``text`` with every generated block replaced by its current content."""
    for name, make in blocks.items():
        pattern = re.compile(
            rf"(<!-- generated:{name}:start -->\n)(?:.*?\n)?(<!-- generated:{name}:end -->)", re.S
        )
        if not pattern.search(text):
            raise ValueError(f"marker block {name!r} is missing")
        text = pattern.sub(lambda m, make=make: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def stale(root: Path = REPO_ROOT) -> list[str]:
    """The files whose generated blocks differ from the code."""
    out = []
    for name, blocks in FILES.items():
        text = (root / name).read_text(encoding="utf-8")
        if render(text, blocks) != text:
            out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is out of date")
    args = parser.parse_args(argv)
    if args.check:
        drifted = stale()
        for name in drifted:
            print(f"{name} is out of date: run `make docs`", file=sys.stderr)
        return 1 if drifted else 0
    for name, blocks in FILES.items():
        path = REPO_ROOT / name
        path.write_text(render(path.read_text(encoding="utf-8"), blocks), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

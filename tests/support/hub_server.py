"""A local stand-in for the Hugging Face Hub: the part of its HTTP API that huggingface_hub's
listings and downloads use.

The hub cannot be reached from the tests, so this server (``http.server`` in a thread on
127.0.0.1, a free port; point ``HF_ENDPOINT`` at ``url``) serves repositories from a folder,
``root/OWNER/NAME/...``, one commit per repository (a hash of its files):

* ``GET /api/models/OWNER/NAME[/revision/REV]``: ``{"id", "sha", "siblings"}``;
* ``GET /api/models/OWNER/NAME/tree/REV[/PATH]?recursive=...``: the file listing,
  ``[{"type": "file", "path", "size", "oid"}, ...]`` (and the folders when not recursive);
* ``HEAD`` and ``GET /OWNER/NAME/resolve/REV/PATH``: ``X-Repo-Commit``, ``ETag`` and
  ``Content-Length`` headers, and the file's bytes.

A missing repository or file answers 404 with the hub's ``X-Error-Code``, and so does a
download of a file named in ``broken`` (``OWNER/NAME/PATH``) though the listings show it.
Every request is recorded as ``(method, path)``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse


class HubServer:
    """Serves the repositories under ``root`` until ``close``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str]] = []
        self.broken: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                server._answer(self, body=False)

            def do_GET(self) -> None:
                server._answer(self, body=True)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def files(self, repo: str) -> dict[str, Path]:
        folder = self.root / repo
        return {
            p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()
        }

    def commit(self, repo: str) -> str:
        digest = hashlib.sha1()
        for name, path in self.files(repo).items():
            digest.update(f"{name}\0{path.stat().st_size}\0{_sha(path)}\n".encode())
        return digest.hexdigest()

    # -- answers --

    def _answer(self, h: BaseHTTPRequestHandler, *, body: bool) -> None:
        url = urlparse(h.path)
        path = unquote(url.path)
        self.requests.append((h.command, path))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo = "/".join(parts[2:4])
            if not (self.root / repo).is_dir():
                return self._error(h, 404, "RepoNotFound")
            rest = parts[4:]
            if not rest or rest[0] == "revision":
                return self._json(h, self._info(repo), body)
            if rest[0] == "tree" and len(rest) >= 2:
                recursive = parse_qs(url.query).get("recursive", ["False"])[0].lower() == "true"
                return self._json(h, self._tree(repo, "/".join(rest[2:]), recursive), body)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, name = "/".join(parts[:2]), "/".join(parts[4:])
            if not (self.root / repo).is_dir():
                return self._error(h, 404, "RepoNotFound")
            file = self.files(repo).get(name)
            if file is None or f"{repo}/{name}" in self.broken:
                return self._error(h, 404, "EntryNotFound")
            data = file.read_bytes()
            h.send_response(200)
            h.send_header("X-Repo-Commit", self.commit(repo))
            h.send_header("ETag", f'"{_sha(file)}"')
            h.send_header("Content-Length", str(len(data)))
            h.send_header("Content-Type", "application/octet-stream")
            h.end_headers()
            if body:
                h.wfile.write(data)
            return None
        return self._error(h, 404, "EntryNotFound")

    def _info(self, repo: str) -> dict:
        return {
            "id": repo,
            "modelId": repo,
            "sha": self.commit(repo),
            "private": False,
            "siblings": [{"rfilename": name} for name in self.files(repo)],
        }

    def _tree(self, repo: str, under: str, recursive: bool) -> list[dict]:
        prefix = f"{under}/" if under else ""
        out, folders = [], set()
        for name, path in self.files(repo).items():
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            if not recursive and "/" in rest:
                folders.add(prefix + rest.split("/")[0])
                continue
            size = path.stat().st_size
            out.append({"type": "file", "path": name, "size": size, "oid": _sha(path)[:40]})
        out += [{"type": "directory", "path": f, "oid": "0" * 40} for f in sorted(folders)]
        return out

    @staticmethod
    def _json(h: BaseHTTPRequestHandler, value: object, body: bool) -> None:
        data = json.dumps(value).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    @staticmethod
    def _error(h: BaseHTTPRequestHandler, code: int, error_code: str) -> None:
        data = json.dumps({"error": error_code}).encode()
        h.send_response(code)
        h.send_header("X-Error-Code", error_code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()

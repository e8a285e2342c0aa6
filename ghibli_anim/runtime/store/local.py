"""``LocalStore``: objects as files in a folder (the embedded mode; ``ANIM_RUNS_DIR``).

``jobs/{id}/X`` lives at ``ROOT/{id}/X``, ``uploads/X`` at ``ROOT/_uploads/X``,
``loras/X`` at ``ROOT/_loras/X``. Writes go to a temporary file in the same folder and
are renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import tempfile
from pathlib import Path

from ghibli_anim.contracts import keys
from ghibli_anim.runtime.store.base import (
    DEFAULT_CONTENT_TYPE,
    NotFound,
    ObjectInfo,
    Store,
    check_prefix,
    check_ttl,
    sha256_hex,
)

_TMP_PREFIX = ".tmp-"
# Top-level key folders and the folder each lives in under the root.
_LOCAL_DIRS = {keys.UPLOAD_PREFIX: "_uploads", keys.LORA_PREFIX: "_loras"}


class LocalStore(Store):
    """Objects as files under ``root`` (the embedded mode; ``ANIM_RUNS_DIR``).

    ``stat`` hashes the file to report its sha256 (objects are frames and
    outputs, megabytes at most) and reports a content type guessed from the
    extension: the folder keeps no metadata.

    Presigned URLs are ``file://`` URLs of the object's path: they work only on
    this machine, carry no expiry (``ttl_s`` is checked, then ignored) and no
    signature. ``presign_put`` creates the parent folder so its URL is writable;
    whoever writes through it should write a temporary file and rename it.
    """

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().absolute()

    def __repr__(self) -> str:
        return f"LocalStore(root={str(self.root)!r})"

    def _path(self, key_or_prefix: str) -> Path:
        """The file (or folder, for a prefix ending in '/') of a checked key."""
        top, _, rest = key_or_prefix.partition("/")
        if top == keys.JOB_PREFIX:
            return self.root / rest
        return self.root / _LOCAL_DIRS[top] / rest

    def path_of(self, key: str) -> Path:
        """Where the object of ``key`` lives on disk."""
        return self._path(keys.check_key(key))

    def put(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        path = self.path_of(key)
        data = bytes(data)
        # Same folder, so the rename is atomic; readers see old or new, never half.
        for attempt in range(3):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX)
                break
            except FileNotFoundError:
                # A delete_prefix pruned the empty folder in between: make it again.
                if attempt == 2:
                    raise
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return ObjectInfo(key, len(data), sha256_hex(data), content_type)

    def get(self, key: str) -> bytes:
        path = self.path_of(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(key) from None

    def stat(self, key: str) -> ObjectInfo | None:
        path = self.path_of(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        content_type = mimetypes.guess_type(path.name)[0] or DEFAULT_CONTENT_TYPE
        return ObjectInfo(key, len(data), sha256_hex(data), content_type)

    def exists(self, key: str) -> bool:
        return self.path_of(key).is_file()

    def list(self, prefix: str) -> list[str]:
        check_prefix(prefix)
        # Walk the folder of the prefix's last complete segment, then filter.
        folder_key = prefix[: prefix.rfind("/") + 1]
        folder = self._path(folder_key)
        found: list[str] = []
        for dirpath, _dirs, files in os.walk(folder):
            rel = Path(dirpath).relative_to(folder).as_posix()
            base = folder_key if rel == "." else f"{folder_key}{rel}/"
            for name in files:
                key = base + name
                if name.startswith(_TMP_PREFIX) or not key.startswith(prefix):
                    continue
                # Files that no key maps to are not objects.
                with contextlib.suppress(ValueError):
                    found.append(keys.check_key(key))
        return sorted(found)

    def delete(self, key: str) -> None:
        self.path_of(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        count = super().delete_prefix(prefix)
        # Drop folders left empty, bottom up, stopping at the root (or _uploads, _loras).
        top = prefix.split("/", 1)[0]
        stop = self.root if top == keys.JOB_PREFIX else self._path(top + "/")
        folder = self._path(prefix[: prefix.rfind("/") + 1])
        for dirpath, _dirs, _files in os.walk(folder, topdown=False):
            if Path(dirpath) != stop:
                with contextlib.suppress(OSError):  # not empty: keep it
                    os.rmdir(dirpath)
        while folder != stop and stop in folder.parents:
            try:
                folder.rmdir()
            except FileNotFoundError:
                pass  # the walk above removed it already
            except OSError:
                break  # not empty: neither are its parents
            folder = folder.parent
        return count

    def presign_get(self, key: str, ttl_s: int | None = None) -> str:
        check_ttl(ttl_s, 900)
        return self.path_of(key).as_uri()

    def presign_put(self, key: str, ttl_s: int | None = None) -> str:
        check_ttl(ttl_s, 900)
        path = self.path_of(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.as_uri()

    def ensure_bucket(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

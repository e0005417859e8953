"""Crash-safe file writing and streaming JSONL reading.

Every artifact cliff_lens writes goes through these helpers: whole files are written to a
temporary file in the same directory and renamed into place (atomic on POSIX), and JSONL
appends write whole lines followed by ``fsync`` so a killed run leaves at worst a missing
last record, never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_save_safetensors",
    "iter_jsonl",
    "iter_jsonl_numbered",
    "append_jsonl",
    "write_jsonl",
    "sha256_file",
    "hash_obj",
    "JsonlError",
]


class JsonlError(ValueError):
    """A malformed line in a JSONL file; the message names the file and line number."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same dir + rename).

    The temp file is named ``.{name}.{pid}.XXXX.tmp``; temp files of the same target left by a
    process that no longer runs (killed mid-write, e.g. SIGKILL) are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 & ~umask)
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    """The process umask: from /proc on Linux, else by setting and restoring it (no getter)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_stale_temps(path: Path) -> None:
    """Delete ``.{name}.{pid}.*.tmp`` files next to ``path`` whose writer process is gone."""
    prefix = f".{path.name}."
    try:
        names = [n for n in os.listdir(path.parent) if n.startswith(prefix) and n.endswith(".tmp")]
    except OSError:
        return
    for n in names:
        pid = n[len(prefix) :].split(".", 1)[0]
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        try:
            (path.parent / n).unlink()
        except OSError:
            pass


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: keep its file
    return True


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (keys kept in insertion order)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=True) + "\n")


def atomic_save_safetensors(
    tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    """Save a dict of tensors as safetensors atomically (never pickle)."""
    from safetensors.torch import save

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write_bytes(path, save(clean, metadata=metadata))


def iter_jsonl(path: str | os.PathLike, *, on_error: Literal["raise", "skip"] = "raise") -> Iterator[dict]:
    """Stream the JSON objects of a JSONL file, one line at a time (bounded memory).

    Blank lines are ignored. A malformed line (bad JSON, not an object, not UTF-8) raises
    :class:`JsonlError` naming ``path:line`` when ``on_error="raise"``, or is skipped with a
    warning naming it when ``on_error="skip"``. A final line without a newline (a write cut
    off by a crash) is treated the same way.
    """
    for _, obj in iter_jsonl_numbered(path, on_error=on_error):
        yield obj


def iter_jsonl_numbered(
    path: str | os.PathLike, *, on_error: Literal["raise", "skip"] = "raise"
) -> Iterator[tuple[int, dict]]:
    """Like :func:`iter_jsonl`, but yields ``(line_number, object)`` (1-based file lines), so a
    caller that rejects a well-formed record can name its real line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; check the path or run the stage that writes it")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
                if not isinstance(obj, dict):
                    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
            except (UnicodeDecodeError, ValueError) as e:
                msg = f"{path}:{lineno}: malformed JSONL line ({e}); fix or delete the line, or pass on_error='skip'"
                if on_error == "skip":
                    warnings.warn(msg, stacklevel=3)
                    continue
                raise JsonlError(msg) from None
            yield lineno, obj


def append_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Append records to a JSONL file as whole lines and fsync; returns how many were written.

    If the file ends in a partial line (a crash mid-write), that fragment is removed first so
    the file stays valid.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _truncate_partial_last_line(path)
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
    if not lines:
        return 0
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(lines))
        f.flush()
        os.fsync(f.fileno())
    return len(lines)


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Write a whole JSONL file atomically."""
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _truncate_partial_last_line(path: Path) -> bool:
    """Remove a trailing fragment without a newline (a write cut off by a crash); True if it did."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return False
        # walk back to the last newline and cut the fragment after it
        size = f.seek(0, os.SEEK_END)
        pos = size
        chunk = 4096
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            buf = f.read(pos - start)
            idx = buf.rfind(b"\n")
            if idx >= 0:
                f.truncate(start + idx + 1)
                return True
            pos = start
        f.truncate(0)
    return True


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_obj(obj: Any) -> str:
    """Stable short hash of a JSON-serialisable object (for stage input fingerprints)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]

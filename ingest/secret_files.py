"""Secrets generated once and kept in the data folder (webhook token, session key)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def load_or_create(path: Path, nbytes: int = 32) -> tuple[str, bool]:
    """The secret in `path`, created (mode 0600) if missing; also says whether it was made.

    Written aside then linked in: processes starting together all end up with the same
    secret, and nobody ever reads a half-written file.
    """
    if path.exists():
        return path.read_text(encoding="utf-8").strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(nbytes)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secret + "\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(partial, path)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip(), False
    finally:
        partial.unlink()
    return secret, True

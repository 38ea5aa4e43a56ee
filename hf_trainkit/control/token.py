"""Bearer tokens of the HTTP endpoints (RUN_DIR/control_token, RUN_DIR/dashboard_token): readable by the user
only, never written through a planted symlink, never trusted from a file another user could have written."""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path

from ..constants import TOKEN_FILE


def write_token(run_dir: str | os.PathLike, name: str = TOKEN_FILE, token: str | None = None) -> str:
    """A bearer token (`token`, or a fresh one) in RUN_DIR/NAME (default `control_token`; the dashboard writes its
    own), readable by the user only (0600, also if the file existed). Returns the token."""
    token = token or secrets.token_urlsafe(32)
    path = Path(run_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    # A new file of our own (O_EXCL: never one planted in advance; O_NOFOLLOW: never through a symlink), renamed
    # over the old name: a symlink left at NAME is replaced, its target never written.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        os.write(descriptor, token.encode())
    finally:
        os.close(descriptor)
    os.replace(temporary, path)
    return token


def read_token(run_dir: str | os.PathLike, name: str = TOKEN_FILE) -> str | None:
    """The token already in RUN_DIR/NAME, if that file is safe to trust: a regular file (not a symlink) of this
    user, readable by no one else, holding one token of at least 32 URL-safe characters; None otherwise."""
    try:
        descriptor = os.open(Path(run_dir) / name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        info = os.fstat(descriptor)
        if (not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077 or info.st_size > 1024
                or (hasattr(os, "getuid") and info.st_uid != os.getuid())):
            return None
        token = os.read(descriptor, 1024).decode("ascii", "replace").strip()
    finally:
        os.close(descriptor)
    return token if re.fullmatch(r"[A-Za-z0-9_-]{32,512}", token) else None

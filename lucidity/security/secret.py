"""The cluster secret: where it comes from, how it is checked, and a new one written safely.

`load_secret` reads it from an argument, a file, ``$LUCIDITY_SECRET`` or ``$LUCIDITY_SECRET_FILE``; a
secret file must be a regular file its group and others can neither read nor write (0600), and a secret
must be long enough to derive keys from. `write_secret_file` makes a new one, never overwriting a file.
"""

from __future__ import annotations

import os
import stat
from typing import Mapping, Optional

from ..errors import AuthenticationError

__all__ = ["load_secret", "write_secret_file", "SECRET_ENV", "SECRET_FILE_ENV", "MIN_SECRET_BYTES"]

#: Environment variables consulted by `load_secret`, after its explicit arguments.
SECRET_ENV = "LUCIDITY_SECRET"
SECRET_FILE_ENV = "LUCIDITY_SECRET_FILE"
#: Shortest secret accepted, in bytes (after stripping whitespace).
MIN_SECRET_BYTES = 16
#: Largest secret file read, in bytes; anything bigger is not a secret file.
MAX_SECRET_FILE_BYTES = 4096
#: Bytes of randomness in a secret made by `write_secret_file` (43 characters once base64url-encoded).
NEW_SECRET_BYTES = 32


def load_secret(
    secret: Optional[str] = None,
    secret_file: Optional[str] = None,
    environ: Mapping[str, str] = os.environ,
) -> Optional[bytes]:
    """Find the cluster secret: the explicit secret, else the file, else $LUCIDITY_SECRET, else the file
    named by $LUCIDITY_SECRET_FILE.

    Surrounding whitespace is stripped. An environment variable that is set but empty counts as unset (the
    shell idiom ``LUCIDITY_SECRET= cmd``); an explicit empty secret is refused as too short.

    Returns:
        The secret as bytes, or None if no source gave one.
    Raises:
        AuthenticationError: the secret file can be read or written by group or others (its mode has bits
            in 0o077): a secret others can read is not a secret. The message names the file, mode and fix.
        ValueError: the secret is shorter than `MIN_SECRET_BYTES`, or the file is not a regular file or is
            larger than any secret.
        OSError: the secret file cannot be opened (FileNotFoundError names it and where the name came from).
    """
    if secret is not None:
        return _checked(secret.encode("utf-8").strip(), "the secret given")
    if secret_file is not None:
        return _read_secret_file(secret_file, "the secret_file given")
    if environ.get(SECRET_ENV):
        return _checked(environ[SECRET_ENV].encode("utf-8").strip(), f"${SECRET_ENV}")
    if environ.get(SECRET_FILE_ENV):
        return _read_secret_file(environ[SECRET_FILE_ENV], f"${SECRET_FILE_ENV}")
    return None


def write_secret_file(path: str) -> None:
    """Write a new random secret to `path`, a new file that is 0600 from the moment it exists.

    Raises:
        FileExistsError: `path` exists (a symlink included); an existing secret is never overwritten,
            because every daemon and client of that cluster depends on it.
    """
    import secrets  # here: it imports hmac and OpenSSL, 3 ms of every process's start-up otherwise

    token = secrets.token_urlsafe(NEW_SECRET_BYTES)
    # O_EXCL creates or fails atomically and refuses symlinks; the mode is applied at creation, so there is
    # no window in which the file is readable by others (zmq.auth.create_certificates writes 0644).
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise FileExistsError(
            exc.errno, f"refusing to overwrite the existing secret file {path}; remove it first if you "
            "really mean to replace this cluster's secret", path
        ) from None
    try:
        os.write(fd, (token + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_secret_file(path: str, source: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError as exc:
        raise FileNotFoundError(exc.errno, f"secret file {path} (from {source}) does not exist", path) from None
    try:
        # fstat on the open descriptor: the mode checked is the mode of the file read, symlink or not.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"secret file {path} (from {source}) is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise AuthenticationError(
                f"refusing the secret file {path} (from {source}): its mode is {mode:04o}, so group or "
                f"others can read or change it; run `chmod 600 {path}`, and consider the secret "
                "compromised if others could read it",
                path=path,
                mode=mode,
            )
        data = os.read(fd, MAX_SECRET_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise ValueError(f"secret file {path} (from {source}) is over {MAX_SECRET_FILE_BYTES} bytes: "
                         "not a secret file")
    return _checked(data.strip(), f"secret file {path} (from {source})")


def _checked(secret: bytes, source: str) -> bytes:
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{source} is {len(secret)} bytes long; a cluster secret needs at least {MIN_SECRET_BYTES}. "
            "Make one with lucidity.security.write_secret_file(path), or "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return secret

"""File-system discipline for keys, tokens and state files (private helpers).

Theory of operation
-------------------
Files the library writes are never written *through* a path an attacker could
have prepared:

* :func:`write_atomic` writes a new file under a fresh random name in the
  destination's directory, created with ``O_EXCL | O_NOFOLLOW`` and the final
  mode, then renames it over the destination (``os.replace``; without
  *overwrite*, ``os.link`` so an existing name is never clobbered). A symbolic
  link at the destination is refused, never followed or replaced.
* :func:`open_private` opens (creating if asked) a file that must be ours:
  ``O_NOFOLLOW``, a regular file, owned by the effective user (or root), and
  with no group/other permission bits (tightened to 0600 if it has some).
* :func:`ensure_private_dir` creates a directory 0700, or accepts an existing
  one that is ours and not writable by group or others.
* :func:`check_private` checks an open file's owner and mode (for readers of
  private keys), on the descriptor actually read, so there is no window
  between the check and the read.

Every failure is a :class:`~m2mproto.errors.LocalProtocolError` with the
caller's code and a message naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from .errors import ErrorCode, LocalProtocolError

__all__ = ["check_private", "ensure_private_dir", "open_private", "write_atomic"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _fail(path: Path | str, what: str, code: ErrorCode) -> LocalProtocolError:
    return LocalProtocolError(f"{path}: {what}", code)


def _owner_ok(uid: int) -> bool:
    return uid in (os.geteuid(), 0)


def check_private(
    fd: int, path: Path | str, code: ErrorCode, *, mode_code: ErrorCode | None = None
) -> os.stat_result:
    """Check that the open file *fd* is a regular file of ours with no group/other bits.

    Raises:
        LocalProtocolError: *code* for a non-regular file; *mode_code*
            (default *code*) for a foreign owner or group/other permission bits.
    """
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _fail(path, "not a regular file", code)
    if not _owner_ok(st.st_uid):
        raise _fail(
            path,
            f"owned by uid {st.st_uid}, not by this user (uid {os.geteuid()}) or root",
            mode_code or code,
        )
    if st.st_mode & 0o077:
        raise _fail(
            path,
            f"private file is accessible by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}",
            mode_code or code,
        )
    return st


def _is_symlink(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def open_private(path: Path, code: ErrorCode, *, create: bool = True) -> int:
    """Open *path* read-write without following a symlink; return the descriptor.

    Creates the file 0600 if *create* and it is missing. An existing file must
    be a regular file owned by this user (or root); group/other permission
    bits are removed.

    Raises:
        LocalProtocolError: (*code*) a symlink, another file type, a foreign
            owner, or an OS error.
    """
    flags = os.O_RDWR | _NOFOLLOW | _CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP or _is_symlink(path):
            raise _fail(
                path, "is a symbolic link (refused: it could point anywhere)", code
            ) from None
        raise _fail(path, f"cannot open ({exc.strerror})", code) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _fail(path, "not a regular file", code)
        if not _owner_ok(st.st_uid):
            raise _fail(path, f"owned by uid {st.st_uid}, not by this user", code)
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def ensure_private_dir(path: Path, code: ErrorCode = ErrorCode.INVALID_ARGUMENT) -> Path:
    """Create *path* (and parents) with the last component 0700, or check an existing one.

    An existing directory must be owned by this user (or root) and not
    writable by group or others (so nobody else can plant files or links in
    it). Its mode is otherwise left alone.

    Raises:
        LocalProtocolError: (*code*) not a directory, foreign owner, writable
            by others, or an OS error.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700)  # whatever the umask
        except FileExistsError:
            pass
        st = os.stat(path)
    except OSError as exc:
        raise _fail(path, f"cannot create state directory ({exc.strerror})", code) from None
    if not stat.S_ISDIR(st.st_mode):
        raise _fail(path, "not a directory", code)
    if not _owner_ok(st.st_uid):
        raise _fail(path, f"directory owned by uid {st.st_uid}, not by this user", code)
    if st.st_mode & 0o022:
        raise _fail(
            path,
            f"directory is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 700 {path}",
            code,
        )
    return path


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int,
    overwrite: bool,
    code: ErrorCode,
    what: str = "file",
) -> None:
    """Write *data* to *path* atomically, never through a symlink.

    Raises:
        LocalProtocolError: (*code*) the destination is a symlink or not a
            regular file, exists while *overwrite* is false, or an OS error.
    """
    target = Path(path)
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise _fail(target, f"cannot write {what} ({exc.strerror})", code) from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise _fail(target, f"is a symbolic link (refusing to write a {what} through it)", code)
        if not overwrite:
            raise _fail(target, f"file exists (refusing to overwrite a {what})", code)
        if not stat.S_ISREG(st.st_mode):
            raise _fail(target, f"not a regular file (refusing to replace it with a {what})", code)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, target)  # replaces the name; never follows a link there
        else:
            _link_new(tmp, target)
    except FileExistsError:
        _unlink_quietly(tmp)
        raise _fail(target, f"file exists (refusing to overwrite a {what})", code) from None
    except OSError as exc:
        _unlink_quietly(tmp)
        raise _fail(target, f"cannot write {what} ({exc.strerror})", code) from None


_NO_HARDLINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV}


def _link_new(tmp: Path, target: Path) -> None:
    """Give *tmp* the name *target* only if that name is free (atomic where links work)."""
    try:
        os.link(tmp, target)  # fails with EEXIST if the name appeared meanwhile
    except OSError as exc:
        if exc.errno not in _NO_HARDLINKS:
            raise
        if os.path.lexists(target):  # no hard links here: check, then rename
            raise FileExistsError(errno.EEXIST, "exists") from None
        os.replace(tmp, target)
    else:
        os.unlink(tmp)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)

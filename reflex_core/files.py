"""Where the project reads and writes files it did not make, and how.

An input file a user names (a model folder's configs, training data, a corpus)
is read only if it is a regular file (a link is followed only to one) of
bounded size: stat-ed before it is opened and opened without blocking, so a
FIFO or a device never hangs or floods a read.

A report path (`eval --json FILE`, a bench's OUT/STEM.json) follows one policy:
`-` is stdout; a character device (/dev/null, a tty) is written through, never
replaced; a regular file or a new path is written beside itself and renamed
into place; a symbolic link is followed, so that its target gets these rules
and the link stays a link (what a user means by naming it); a read-only file,
and any other kind of path (directory, FIFO, socket, block device), is refused
in one line. The check runs before long work and again when writing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import one_line

STDOUT = "-"
MAX_SHOWN_PATH = 200  # characters of a path echoed in a message
TMP_MARK = ".tmp-"  # write_atomically's temporary files: .NAME.tmp-PID


class OutputError(Exception):
    """A one-line reason an output cannot be written or its folder is in use."""


def shown(path: str | Path) -> str:
    """A path as a message shows it: one line, and cut short."""
    return one_line(path, MAX_SHOWN_PATH)


def file_kind(mode: int) -> str:
    """What a stat's mode says the path is, in words for a message."""
    for test, name in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"


def open_regular(path: str | Path, limit: int | None, what: str = "file", error=ValueError):
    """(binary file, size) of a regular file of at most `limit` bytes, else `error`
    in one line. The stat comes first and the open never waits on a FIFO swapped in
    after it; the open descriptor is checked again."""
    regular_stat(path, limit, what, error)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise error(f"cannot read {shown(path)}: {err.strerror or type(err).__name__}") from None
    try:
        info = os.fstat(fd)
        _check_regular(path, info, limit, what, error)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


def regular_stat(path: str | Path, limit: int | None, what: str = "file", error=ValueError) -> os.stat_result:
    """The stat of a regular file (a link followed only to one) of at most `limit`
    bytes, else `error` in one line; the file is not opened."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{shown(path)}: no such file") from None
    except OSError as err:
        raise error(f"cannot read {shown(path)}: {err.strerror or type(err).__name__}") from None
    _check_regular(path, info, limit, what, error)
    return info


def _check_regular(path, info: os.stat_result, limit: int | None, what: str, error) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{shown(path)} is not a regular file (a {file_kind(info.st_mode)})")
    if limit is not None and info.st_size > limit:
        raise error(f"{shown(path)} is {info.st_size:,} bytes; a {what} may hold at most {limit:,}")


def read_regular(path: str | Path, limit: int, what: str = "file", error=ValueError) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (open_regular), the
    limit held even if the file grows while it is read."""
    f, _ = open_regular(path, limit, what, error)
    with f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise error(f"{shown(path)} grew past {limit:,} bytes while it was read")
    return data


def parse_json(text: str | bytes):
    """json.loads, its errors (bad UTF-8 and nesting too deep included) as one-line ValueErrors."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except ValueError as err:  # UnicodeDecodeError is one
        raise ValueError(one_line(err, 200)) from None


def expand(path: str | Path) -> Path:
    """`~` and `~user` expanded; an unknown user is an OutputError, not a RuntimeError."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        raise OutputError(f"{shown(path)}: no such user's home") from None


def temporary_name(path: Path) -> Path:
    """The temporary file write_atomically uses for `path` (hidden, beside it, this process's)."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def is_temporary_name(name: str) -> bool:
    """Whether a file name is one of write_atomically's temporaries (of any process, with
    any suffix a writer adds to it, as mx.save_safetensors adds .safetensors)."""
    if not name.startswith(".") or TMP_MARK not in name:
        return False
    pid = name.rsplit(TMP_MARK, 1)[1].split(".", 1)[0]
    return pid.isdigit()


def write_atomically(path: str | Path, data: str | bytes | Callable[[Path], None]) -> Path:
    """Write beside the target, then rename over it.

    `data` is text, bytes, or a function that writes the given temporary path
    (torch.save, save_pretrained). On any failure the temporary file is removed
    and the target is left as it was.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        if callable(data):
            data(tmp)
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only folder: the first error is the one to report
            pass
        raise
    return path


def remove_temporaries(folder: Path) -> None:
    """The half-written files that killed writers left in `folder` (write_atomically's
    .NAME.tmp-PID, with any suffix): call it holding the folder's lock, when no live
    process owns one."""
    folder = Path(folder)
    if folder.is_dir():
        for entry in folder.iterdir():
            if is_temporary_name(entry.name) and entry.is_file() and not entry.is_symlink():
                entry.unlink(missing_ok=True)


MAX_RECORD_LINE = 1 << 16  # bytes: a log record (curve.jsonl) is about a hundred


def keep_records(path: Path, keep: Callable[[dict], bool]) -> None:
    """Rewrite a JSON-lines log (atomically) with the records `keep` accepts; lines that
    are not a whole record (a write cut short by a kill, an overlong line) go too."""
    path = Path(path)
    if not path.is_file() or path.is_symlink():
        return

    def write(tmp: Path) -> None:
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            while line := src.readline(MAX_RECORD_LINE + 1):
                if len(line) > MAX_RECORD_LINE:  # skip the rest of an overlong line
                    while (more := src.readline(MAX_RECORD_LINE + 1)) and not more.endswith(b"\n"):
                        pass
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if line.endswith(b"\n") and isinstance(record, dict) and keep(record):
                    dst.write(line)

    write_atomically(path, write)


def append_record(path: Path, record: dict) -> None:
    """One JSON line appended to a log in an output folder (a training curve), which
    must be a regular file or absent: a link or a FIFO planted there is refused, not
    followed or waited on."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        raise OutputError(f"cannot write {shown(path)}: {err.strerror or type(err).__name__}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OutputError(f"cannot write {shown(path)}: it is a {file_kind(info.st_mode)}, not a file")
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


# ------------------------------------------------------------------- reports


def _target(path: str | Path) -> tuple[str, Path]:
    """(how to write, what) for a report path: ("stdout", -), ("device", the path as
    given), ("file", the link-resolved file to replace). Raises OutputError."""
    text = str(path)
    if text == STDOUT:
        return "stdout", Path(STDOUT)
    if not text.strip():
        raise OutputError("the output path is empty")
    if "\0" in text:
        raise OutputError(f"{shown(text)} is not a path (it holds a NUL character)")
    path = expand(text)
    try:
        info = os.stat(path)  # follows links: the rules apply to the target
    except FileNotFoundError:
        info = None
    except OSError as err:
        raise OutputError(f"cannot write {shown(path)}: {err.strerror or err}") from None
    if info is not None and stat.S_ISCHR(info.st_mode):
        if not os.access(path, os.W_OK):
            raise OutputError(f"cannot write {shown(path)}: the device is not writable")
        return "device", path
    real = Path(os.path.realpath(path))
    if info is not None:
        kind = file_kind(info.st_mode)
        if kind != "file":
            raise OutputError(f"cannot write {shown(path)}: it is a {kind}, not a file (give - for stdout)")
        # the mode bits, not os.access alone: root may write anything, and must not replace this
        if not info.st_mode & 0o222 or not os.access(real, os.W_OK):
            raise OutputError(f"cannot write {shown(path)}: the file is read-only")
    parent = real.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {shown(path)}: no directory {shown(parent)}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {shown(path)}: the directory {shown(parent)} is not writable")
    return "file", real


def writable_file(path: str | Path) -> str | None:
    """Why `path` cannot take a report (None when it can): checked before long work."""
    try:
        _target(path)
    except OutputError as err:
        return str(err)
    return None


def write_report(path: str | Path, data: str | bytes) -> None:
    """Write a report by the module's policy; raises OutputError in one line."""
    how, target = _target(path)  # again: the path may have changed during the work
    raw = data.encode() if isinstance(data, str) else data
    try:
        if how == "stdout":
            sys.stdout.flush()
            if hasattr(sys.stdout, "buffer"):
                sys.stdout.buffer.write(raw)
            else:  # a text-only stream (a test's capture)
                sys.stdout.write(raw.decode())
            sys.stdout.flush()
        elif how == "device":
            fd = os.open(target, os.O_WRONLY | os.O_NOCTTY)  # never O_CREAT: a device, not a file
            try:
                view = memoryview(raw)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
        else:
            mode = None
            with contextlib.suppress(FileNotFoundError):
                mode = stat.S_IMODE(os.stat(target).st_mode)

            def write(tmp: Path) -> None:
                tmp.write_bytes(raw)
                if mode is not None:  # the replaced file's permissions carry over
                    os.chmod(tmp, mode)

            write_atomically(target, write)
    except OSError as err:
        raise OutputError(f"cannot write {shown(path)}: {err.strerror or err}") from None


# --------------------------------------------------------------------- locks


def lock_path(folder: str | Path) -> Path:
    """The lock file of an output folder: `.NAME.lock` beside it (the folder may not
    exist yet, or be renamed into place)."""
    folder = expand(folder).resolve()
    if not folder.name:
        raise OutputError(f"{shown(folder)} cannot be an output folder")
    return folder.parent / f".{folder.name}.lock"


@contextlib.contextmanager
def output_lock(folder: str | Path, what: str) -> Iterator[Path]:
    """Hold `folder` for this process while the block runs: a second process gets an
    OutputError naming the holder. flock is released by the kernel when the holder dies,
    so a killed run's lock is taken over by the next one. The lock file is removed on a
    clean release. Creates the folder's parent when missing."""
    path = lock_path(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot lock {shown(folder)}: {err.strerror or err}") from None
    fd = _acquire(path, folder)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {what}\n".encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still held: a waiting process then retries on a fresh file
        os.close(fd)


def locks_output(argument: str, what: str):
    """Decorator: the function runs holding output_lock on its argument named `argument`."""
    import functools
    import inspect

    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args, **kwargs):
            folder = signature.bind(*args, **kwargs).arguments[argument]
            with output_lock(folder, what):
                return fn(*args, **kwargs)

        return locked

    return decorate


def _acquire(path: Path, folder) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    for _ in range(100):  # a retry only when a holder removed the file between open and flock
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as err:
            raise OutputError(f"cannot lock {shown(folder)}: {shown(path)}: {err.strerror or err}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OutputError(f"cannot lock {shown(folder)}: {shown(path)} is not a regular file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OutputError(f"{shown(folder)} is in use: {_holder(fd)}") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            return fd
        os.close(fd)
    raise OutputError(f"cannot lock {shown(folder)}: {shown(path)} keeps changing")


def _holder(fd: int) -> str:
    """Who holds a lock, as its file says ("pid WHAT"), for the refusal's one line."""
    try:
        words = os.pread(fd, 64, 0).decode("ascii", "replace").split()
    except OSError:
        words = []
    if len(words) >= 2 and words[0].isdigit() and words[1].replace("-", "_").isidentifier():
        return f"another {words[1]} (pid {words[0]}) is writing it; wait for it or choose another --out"
    return "another process is writing it; wait for it or choose another --out"

"""reflex_core.files: where reports go, and one process per output folder.

Why: a report path may name a device, a link, a read-only file or a folder; the
device must stay a device, the link a link, the read-only file unchanged (as root
too), and anything else refused in one line before the work. Two processes must
never write one output folder, and a killed holder must not lock it for good.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap

import pytest

from reflex_core.files import (
    OutputError,
    append_record,
    keep_records,
    lock_path,
    output_lock,
    remove_temporaries,
    writable_file,
    write_report,
)


def _refused(path, message: str) -> str:
    why = writable_file(path)
    assert why is not None and message in why and "\n" not in why, why
    with pytest.raises(OutputError) as err:
        write_report(path, "{}\n")
    assert str(err.value) == why
    return why


def test_a_character_device_is_written_through_never_replaced():
    assert writable_file("/dev/null") is None
    write_report("/dev/null", '{"a": 1}\n')
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    if os.path.exists("/dev/full"):
        assert writable_file("/dev/full") is None  # it is writable; the write says why not
        with pytest.raises(OutputError) as err:
            write_report("/dev/full", "x" * 10000)
        assert str(err.value) == "cannot write /dev/full: No space left on device"
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_dash_is_stdout(capfd):
    assert writable_file("-") is None
    write_report("-", '{"to": "stdout"}\n')
    assert capfd.readouterr().out == '{"to": "stdout"}\n'


def test_a_file_or_a_new_path_is_written_atomically_keeping_its_mode(tmp_path):
    new = tmp_path / "new.json"
    write_report(new, "1\n")
    assert new.read_text() == "1\n"
    new.chmod(0o640)
    inode = new.stat().st_ino
    write_report(new, b"2\n")
    assert new.read_text() == "2\n" and new.stat().st_ino != inode  # replaced, not rewritten
    assert stat.S_IMODE(new.stat().st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["new.json"]


def test_a_read_only_file_is_refused_and_kept_even_for_root(tmp_path):
    report = tmp_path / "report.json"
    report.write_text("kept")
    report.chmod(0o444)
    _refused(report, "read-only")
    assert report.read_text() == "kept" and stat.S_IMODE(report.stat().st_mode) == 0o444


def test_a_link_is_followed_and_stays_a_link(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target.name)
    write_report(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to("made.json")
    write_report(dangling, "made")
    assert dangling.is_symlink() and (tmp_path / "made.json").read_text() == "made"
    to_null = tmp_path / "null"
    to_null.symlink_to("/dev/null")
    write_report(to_null, "gone")
    assert to_null.is_symlink() and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    target.chmod(0o444)  # the target's rules: a read-only target is refused through its link
    _refused(link, "read-only")
    assert target.read_text() == "new"
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    _refused(loop, "cannot write")


def test_other_kinds_are_refused_in_one_line(tmp_path):
    _refused(tmp_path, "it is a directory")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    _refused(fifo, "it is a FIFO")  # refused, not opened: no reader would hang the write
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    old = os.getcwd()
    os.chdir(tmp_path)  # a socket's path must be short
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind("sock")
            _refused(tmp_path / "sock", "it is a socket")
    finally:
        os.chdir(old)
    _refused("", "empty")
    _refused(tmp_path / "missing" / "r.json", "no directory")
    why = _refused(str(tmp_path / "a\nb") + "/r.json", "no directory")
    assert "a\\nb" in why  # the name is escaped to one line
    _refused("x" * 5000, "File name too long")
    _refused("~no-such-user-here/r.json", "no such user")


# --------------------------------------------------------------------- locks

HOLDER = textwrap.dedent(
    """
    import sys, time
    from reflex_core.files import output_lock
    with output_lock(sys.argv[1], "train"):
        print("held", flush=True)
        time.sleep(120)
    """
)


def test_a_folder_is_held_by_one_process_and_a_killed_holders_lock_is_reclaimed(tmp_path):
    folder = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(OutputError) as err:
            with output_lock(folder, "convert"):
                pass
        message = str(err.value)
        assert f"another train (pid {holder.pid})" in message and "\n" not in message
        assert str(folder) in message
        holder.send_signal(signal.SIGKILL)  # the kernel drops a dead process's flock
        holder.wait(timeout=600)
    finally:
        holder.kill()
    assert lock_path(folder).exists()  # left by the dead holder, and no obstacle
    with output_lock(folder / ".." / "out", "train") as path:  # the same folder, however named
        assert path == lock_path(folder)
        assert path.read_text() == f"{os.getpid()} train\n"
    assert not lock_path(folder).exists()  # a clean release removes it


def test_a_planted_lock_file_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / ".out.lock").symlink_to(victim)
    with pytest.raises(OutputError) as err:
        with output_lock(tmp_path / "out", "train"):
            pass
    assert "cannot lock" in str(err.value)
    assert victim.read_text() == "precious"


def test_temporaries_and_cut_records_are_cleaned(tmp_path):
    for name in (".a.tmp-123", ".b.safetensors.tmp-9.safetensors", ".c.tmp-x", "d.tmp-1", "keep"):
        (tmp_path / name).write_text("x")
    remove_temporaries(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [".c.tmp-x", "d.tmp-1", "keep"]
    curve = tmp_path / "curve.jsonl"
    lines = [json.dumps({"step": s}) for s in (1, 2, 3)] + ["[1]", "x" * 100000, '{"step": 2}']
    curve.write_text("\n".join(lines) + "\n" + '{"step": 1')  # the last line cut by a kill
    keep_records(curve, lambda r: r.get("step", 99) <= 2)
    assert curve.read_text() == '{"step": 1}\n{"step": 2}\n{"step": 2}\n'


def test_a_log_is_appended_only_to_a_regular_file(tmp_path):
    """A training curve in an output folder: a link or a FIFO planted in its place is refused."""
    log = tmp_path / "curve.jsonl"
    append_record(log, {"step": 1})
    append_record(log, {"step": 2})
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]
    target = tmp_path / "elsewhere"
    target.write_text("kept")
    link = tmp_path / "linked.jsonl"
    link.symlink_to(target)
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    for path in (link, fifo):
        with pytest.raises(OutputError, match="cannot write"):
            append_record(path, {"step": 3})
    assert target.read_text() == "kept"

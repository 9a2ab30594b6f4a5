"""The metrics textfile: replaced atomically, readable by the collector, clear errors."""

from __future__ import annotations

import doctest
import os
import stat
import threading
from pathlib import Path

import pytest

from portwatchd.outputs import metrics as metrics_module
from portwatchd.outputs.metrics import MetricsError, TextfileWriter


def test_the_textfile_is_written_0644_and_nothing_else_is_left(tmp_path: Path) -> None:
    target = tmp_path / "portwatchd.prom"
    writer = TextfileWriter(target)
    old_umask = os.umask(0o077)
    try:
        writer.write("first\n")
        writer.write("second\n")
    finally:
        os.umask(old_umask)
    assert target.read_text() == "second\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["portwatchd.prom"]


def test_a_reader_never_sees_half_a_file(tmp_path: Path) -> None:
    target = tmp_path / "portwatchd.prom"
    versions = [
        "".join(f'portwatchd_listening_sockets{{port="{port}"}} {n}\n' for port in range(5000))
        for n in range(2)
    ]
    assert len(versions[0]) > 100_000  # several write() calls' worth
    writer = TextfileWriter(target)
    writer.write(versions[0])
    done = threading.Event()
    seen: set[str] = set()

    def read_until_done() -> None:
        while not done.is_set():
            seen.add(target.read_text())

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        for n in range(60):
            writer.write(versions[n % 2])
    finally:
        done.set()
        reader.join()
    assert seen <= set(versions)
    assert os.listdir(tmp_path) == ["portwatchd.prom"]


def _write_as_nobody(path: Path) -> str:
    """The message TextfileWriter(path).write raises, run as user nobody when we are root."""
    if os.geteuid() != 0:
        with pytest.raises(MetricsError) as caught:
            TextfileWriter(path).write("x 1\n")
        return str(caught.value)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, try, report the message, exit at once
        message = "no error"
        try:
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            TextfileWriter(path).write("x 1\n")
        except MetricsError as err:
            message = str(err)
        except BaseException as err:
            message = f"unexpected {err!r}"
        os.write(write_end, message.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    return message


def test_a_directory_we_may_not_write_names_the_file_and_what_to_do(tmp_path: Path) -> None:
    directory = tmp_path / "textfile"
    directory.mkdir()
    directory.chmod(0o755)
    tmp_path.chmod(0o755)
    target = directory / "portwatchd.prom"
    message = _write_as_nobody(target)
    assert message == (
        f"cannot write the metrics textfile {target}: Permission denied "
        "(make its directory writable by the user portwatchd runs as)"
    )
    assert os.listdir(directory) == []


def test_a_missing_directory_is_one_metrics_error(tmp_path: Path) -> None:
    target = tmp_path / "absent" / "portwatchd.prom"
    with pytest.raises(MetricsError) as caught:
        TextfileWriter(target).write("x 1\n")
    assert isinstance(caught.value, OSError)
    assert caught.value.filename == str(target)
    assert "No such file or directory (its directory does not exist" in str(caught.value)


def test_a_failed_rename_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "portwatchd.prom"
    target.mkdir()  # a directory where the file should be: the rename fails
    (target / "keep").write_text("")
    with pytest.raises(MetricsError, match=r"metrics_textfile names a file|Is a directory"):
        TextfileWriter(target).write("x 1\n")
    assert sorted(os.listdir(tmp_path)) == ["portwatchd.prom"]


def test_the_examples_in_the_docstrings() -> None:
    failures, tried = doctest.testmod(metrics_module)
    assert tried > 0 and failures == 0

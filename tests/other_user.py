"""Run Python as another user (`setpriv ... --reuid nobody`), on a copy of portwatchd it can read.

A clone under root's home (/root is mode 0700 on Debian) is out of that
user's reach, and so is the venv's interpreter inside it: exec fails, or
`import portwatchd` does. So the command runs the interpreter the venv was
made from (Debian's python3: the same standard library and, with
--system-site-packages, the same python3-systemd and python3-sdnotify) on a
copy of the package in a world-readable temporary directory. What the test
asserts about permissions is unchanged: only the code's location moves.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent.parent / "portwatchd"
# In a venv, the interpreter it was made from; elsewhere, this one.
BASE_PYTHON = getattr(sys, "_base_executable", "") or sys.executable


def _make_readable(top: str) -> None:
    os.chmod(top, 0o755)
    for directory, subdirs, files in os.walk(top):
        for name in subdirs:
            os.chmod(os.path.join(directory, name), 0o755)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)


def python_as(
    user: Sequence[str],
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = False,
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """Run `python3 ARGS` with the `user` prefix (a setpriv command line).

    `env` is added to this process's environment; `kwargs` go to
    subprocess.run (capture_output and text are on).
    """
    with tempfile.TemporaryDirectory(prefix="pw-other-user-") as where:
        shutil.copytree(
            PACKAGE,
            os.path.join(where, "portwatchd"),
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        _make_readable(where)
        return subprocess.run(
            [*user, BASE_PYTHON, *args],
            cwd=where,
            env={**os.environ, "PYTHONPATH": where, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
            capture_output=True,
            text=True,
            check=check,
            **kwargs,
        )

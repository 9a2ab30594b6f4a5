"""What the system must provide for a configuration: checked before start.

`portwatchd --check-config` runs these so that it checks what start-up
would: the [socket] group exists, and the control socket can be created
where the configuration says. Each error names where the setting was made
(file and line, or the command-line option).
"""

from __future__ import annotations

import grp
import os
import stat

from portwatchd.config import Config, ConfigError


def environment_errors(config: Config) -> list[ConfigError]:
    """Every problem the system has with `config`; [] when start-up can
    proceed. Looks, never changes anything."""
    errors = []
    for check in (_group_error, _socket_path_error, _state_dir_error):
        error = check(config)
        if error is not None:
            errors.append(error)
    return errors


def _error(config: Config, field_path: str, message: str) -> ConfigError:
    where = config.origin(field_path)
    return ConfigError(message, source=where.source, line=where.line, key=where.key)


def _group_error(config: Config) -> ConfigError | None:
    name = config.socket.group
    if not name:
        return None
    try:
        grp.getgrnam(name)
    except KeyError:
        if name.isdigit():
            return None  # a gid needs no entry in /etc/group to own a file
        return _error(
            config,
            "socket.group",
            f'no group "{name}" on this system; create it (groupadd --system {name}) '
            "or name another group",
        )
    return None


def _socket_path_error(config: Config) -> ConfigError | None:
    path = config.socket.path
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None  # the directory check below says which
    except OSError as error:
        return _error(config, "socket.path", f"cannot look at {path}: {error.strerror}")
    if mode is not None and not stat.S_ISSOCK(mode):
        return _error(
            config,
            "socket.path",
            f"{path} exists and is not a socket; remove it or choose another path",
        )
    return _directory_error(config, "socket.path", os.path.dirname(path) or ".")


def _state_dir_error(config: Config) -> ConfigError | None:
    return _directory_error(config, "state_dir", config.state_dir)


def _directory_error(config: Config, field_path: str, directory: str) -> ConfigError | None:
    """`directory` is a directory, or the daemon can create it: its nearest
    existing ancestor is a directory it can write to."""
    candidate = os.path.abspath(directory)
    while True:
        try:
            mode = os.stat(candidate).st_mode
        except (FileNotFoundError, NotADirectoryError):
            candidate = os.path.dirname(candidate)
            continue
        except OSError as error:
            return _error(config, field_path, f"cannot look at {candidate}: {error.strerror}")
        break
    if not stat.S_ISDIR(mode):
        return _error(
            config, field_path, f"{candidate} is not a directory, so {directory} cannot be one"
        )
    if candidate != os.path.abspath(directory) and not os.access(candidate, os.W_OK | os.X_OK):
        return _error(
            config,
            field_path,
            f"{directory} does not exist and cannot be created: {candidate} is not writable",
        )
    return None

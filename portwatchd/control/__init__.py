"""The control socket: `transport` (listener, connections, limits, sliced
replies) and `handlers` (request name -> handler reading the event log).

`legacy` is 0.1's all-in-one server, kept only so that service.py keeps
importing `ControlServer` and `inherited_listen_socket` from here until it
is rewired to transport + handlers; delete it (and these two names) then.
"""

from portwatchd.control.legacy import ControlServer, inherited_listen_socket

__all__ = ["ControlServer", "inherited_listen_socket"]

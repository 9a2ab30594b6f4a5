"""The control socket: `transport` (listener, connections, limits, sliced
replies), `connection` (one client), `socketfile` (the socket file and
systemd's socket), `handlers` (request name -> handler reading the event
log) and `follow` (follow streams over one log subscription)."""

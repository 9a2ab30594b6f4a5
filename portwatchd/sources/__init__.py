"""Where listening sockets and their owners come from."""

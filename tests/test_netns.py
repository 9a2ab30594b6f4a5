import socket
import subprocess


def test_private_netns_hides_host_listeners_and_is_left(netns) -> None:
    out = subprocess.run(["ss", "-Hlntu"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        out = subprocess.run(["ss", "-Hlnt"], capture_output=True, text=True, check=True).stdout
        assert f":{s.getsockname()[1]}" in out

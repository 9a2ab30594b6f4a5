"""The original method, kept as the baseline: run `ss -lntu` and parse its text.

The monitor portwatchd replaces ran `ss -lntu` on every scan and parsed the
output; `ss_scan()` does the same work so the benchmark can say how much
cheaper the netlink scanner is, on the same machine, in the same run.
"""

from __future__ import annotations

import subprocess

from portwatchd.model import Endpoint, Family, Proto

SS_COMMAND = ("ss", "-lntu")

_PROTOS: dict[str, Proto] = {"tcp": "tcp", "udp": "udp"}


class SsParseError(ValueError):
    """A line of `ss -lntu` output that is not what ss prints."""


def parse_local_address(text: str) -> tuple[Family, str, int, str, bool | None]:
    """Split ss's "Local Address:Port" column into (family, address, port, interface, v6only).

    ss prints "[::1]:8080" for IPv6, "127.0.0.53%lo:53" for a socket bound to
    a device, and "*:22" for the IPv6 wildcard when IPV6_V6ONLY is off (the
    dual-stack socket); "[::]:22" is the IPv6 wildcard with IPV6_V6ONLY on.

    >>> parse_local_address("[::1]:8080")
    ('ipv6', '::1', 8080, '', None)
    >>> parse_local_address("127.0.0.53%lo:53")
    ('ipv4', '127.0.0.53', 53, 'lo', None)
    >>> parse_local_address("*:22")
    ('ipv6', '::', 22, '', False)
    >>> parse_local_address("[::]:22")
    ('ipv6', '::', 22, '', True)
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not (port_text.isascii() and port_text.isdigit()):
        raise SsParseError(f"no port in local address {text!r}")
    port = int(port_text)
    if host == "*":
        return "ipv6", "::", port, "", False
    host = host.removeprefix("[").removesuffix("]")
    address, _, interface = host.partition("%")
    if not address:
        raise SsParseError(f"no address in local address {text!r}")
    if ":" in address:
        v6only = True if address == "::" else None
        return "ipv6", address, port, interface, v6only
    return "ipv4", address, port, interface, None


def parse_ss_output(text: str) -> list[Endpoint]:
    """Endpoints from `ss -lntu` output (with or without its header line)."""
    endpoints: list[Endpoint] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] == "Netid":
            continue
        if len(fields) < 6:
            raise SsParseError(f"ss output line {number}: expected 6 columns, got {line!r}")
        proto = _PROTOS.get(fields[0])
        if proto is None:
            raise SsParseError(f"ss output line {number}: unknown netid {fields[0]!r}")
        try:
            family, address, port, interface, v6only = parse_local_address(fields[4])
        except SsParseError as exc:
            raise SsParseError(f"ss output line {number}: {exc}") from None
        endpoints.append(
            Endpoint(
                proto=proto,
                family=family,
                address=address,
                port=port,
                interface=interface,
                v6only=v6only,
            )
        )
    return endpoints


def ss_scan() -> list[Endpoint]:
    """Run `ss -lntu` and parse it: one scan by the original method."""
    result = subprocess.run(SS_COMMAND, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(SS_COMMAND)} failed: {result.stderr.strip()}")
    return parse_ss_output(result.stdout)

from __future__ import annotations

import textwrap
from pathlib import Path

from portwatchd.config import Config, load_config
from portwatchd.model import Endpoint, Owner
from portwatchd.policy import IgnoreRule, is_ignored

REPO = Path(__file__).resolve().parent.parent


def endpoint(
    port: int = 22, address: str = "0.0.0.0", proto: str = "tcp", family: str = "ipv4"
) -> Endpoint:
    return Endpoint(proto=proto, family=family, address=address, port=port)  # type: ignore[arg-type]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "portwatchd.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_is_ignored_judges_rules_without_a_config() -> None:
    rules = (IgnoreRule(ports=((5353, 5353),), proto="udp"), IgnoreRule(process="dnsmasq"))
    assert is_ignored(rules, endpoint(5353, proto="udp"))
    assert not is_ignored(rules, endpoint(5353, proto="tcp"))
    assert is_ignored(rules, endpoint(53), Owner(pid=3, comm="dnsmasq"))
    assert not is_ignored((), endpoint(53), Owner(pid=3, comm="dnsmasq"))


def test_config_is_ignored_asks_the_policy(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[[ignore]]\nport = 22\n"))
    for port in (21, 22, 23):
        assert config.is_ignored(endpoint(port)) == is_ignored(config.ignore, endpoint(port))
    assert Config().is_ignored(endpoint(22)) is False


def rules_of(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, text))


def test_port_range_and_list(tmp_path: Path) -> None:
    config = rules_of(tmp_path, '[[ignore]]\nport = ["6000-6010", 22]\n')
    assert config.is_ignored(endpoint(6000))
    assert config.is_ignored(endpoint(6010))
    assert config.is_ignored(endpoint(22))
    assert not config.is_ignored(endpoint(6011))
    assert not config.is_ignored(endpoint(5999))


def test_cidr_and_exact_address(tmp_path: Path) -> None:
    config = rules_of(
        tmp_path, '[[ignore]]\naddress = "127.0.0.0/8"\n[[ignore]]\naddress = "::1"\n'
    )
    assert config.is_ignored(endpoint(address="127.0.0.53"))
    assert config.is_ignored(endpoint(address="::1", family="ipv6"))
    assert not config.is_ignored(endpoint(address="0.0.0.0"))
    assert not config.is_ignored(endpoint(address="::", family="ipv6"))
    assert not config.is_ignored(endpoint(address="128.0.0.1"))


def test_ipv4_rule_matches_an_ipv4_mapped_address(tmp_path: Path) -> None:
    config = rules_of(tmp_path, '[[ignore]]\naddress = "10.0.0.0/8"\n')
    assert config.is_ignored(endpoint(address="::ffff:10.1.2.3", family="ipv6"))
    assert not config.is_ignored(endpoint(address="::ffff:11.1.2.3", family="ipv6"))


def test_wildcard_address_is_matched_exactly_not_as_everything(tmp_path: Path) -> None:
    config = rules_of(tmp_path, '[[ignore]]\naddress = "0.0.0.0"\n')
    assert config.is_ignored(endpoint(address="0.0.0.0"))
    assert not config.is_ignored(endpoint(address="192.168.1.1"))


def test_every_field_of_a_rule_must_match(tmp_path: Path) -> None:
    config = rules_of(tmp_path, '[[ignore]]\nport = 5353\nproto = "udp"\n')
    assert config.is_ignored(endpoint(5353, proto="udp"))
    assert not config.is_ignored(endpoint(5353, proto="tcp"))
    assert not config.is_ignored(endpoint(5354, proto="udp"))


def test_any_rule_may_match(tmp_path: Path) -> None:
    config = rules_of(tmp_path, "[[ignore]]\nport = 1\n[[ignore]]\nport = 2\n")
    assert config.is_ignored(endpoint(1))
    assert config.is_ignored(endpoint(2))
    assert not config.is_ignored(endpoint(3))


def test_process_and_unit_rules_judge_the_owner(tmp_path: Path) -> None:
    config = rules_of(
        tmp_path, '[[ignore]]\nprocess = "dnsmasq"\n[[ignore]]\nunit = "docker-*.scope"\n'
    )
    dnsmasq = Owner(pid=10, comm="dnsmasq", unit="libvirtd.service")
    container = Owner(pid=11, comm="nginx", unit="docker-0123abcd.scope")
    host_nginx = Owner(pid=12, comm="nginx", unit="nginx.service")
    assert config.is_ignored(endpoint(53), dnsmasq)
    assert config.is_ignored(endpoint(80), container)
    assert not config.is_ignored(endpoint(80), host_nginx)
    # Unknown owner: a process or unit rule cannot match.
    assert not config.is_ignored(endpoint(53), None)
    assert not config.is_ignored(endpoint(53), Owner())


def test_exact_unit_is_not_a_prefix(tmp_path: Path) -> None:
    config = rules_of(tmp_path, '[[ignore]]\nunit = "ssh.service"\n')
    assert config.is_ignored(endpoint(), Owner(pid=1, unit="ssh.service"))
    assert not config.is_ignored(endpoint(), Owner(pid=1, unit="ssh.service.d"))
    assert not config.is_ignored(endpoint(), Owner(pid=1, unit="sshd.service"))


def test_rule_describes_itself_for_log_lines(tmp_path: Path) -> None:
    config = rules_of(
        tmp_path, '[[ignore]]\nport = [22, "80-81"]\nproto = "tcp"\naddress = "::1"\n'
    )
    assert config.ignore[0].describe() == "port=22,80-81 address=::1/128 proto=tcp"


def test_the_man_page_example_is_a_valid_configuration(tmp_path: Path) -> None:
    page = (REPO / "man" / "portwatchd.toml.5").read_text()
    examples = page.split(".SH EXAMPLES", 1)[1]
    block = examples.split(".nf\n", 1)[1].split(".fi\n", 1)[0]
    config = rules_of(tmp_path, block.replace("\\-", "-"))
    assert config.interval == 2.0
    assert config.socket.group == "adm"
    assert len(config.ignore) == 3
    assert config.is_ignored(endpoint(5353, proto="udp"))
    assert config.is_ignored(endpoint(8080, address="::1", family="ipv6"))
    assert not config.is_ignored(endpoint(8080))

"""`meshd pod-init`'s interception rules for istio-iptables' flag combinations.

The expected rule lists follow Istio's tools/istio-iptables/pkg/capture/testdata golden
files (inbound-ports-include, outbound-ports-include, ip-range, loopback-outbound-iprange,
kube-virt-interfaces, basic-exclude-nic) for the parts meshd implements. Two deliberate
differences, both older istio-iptables behaviour: the OUTPUT jump is `-p tcp` (meshd
captures no UDP: no DNS proxy), so -o excludes TCP ports only.
"""
from __future__ import annotations

import argparse

import pytest

from controlplane.podinit import iptables
from controlplane.podinit.iptables import CaptureConfig, CaptureError, capture_config, rules

INJECTOR_DEFAULT = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
                    "-b", "*", "-d", "15090,15021,15020", "--log_output_level=default:info"]

HEAD = [
    "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN",
    "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
]


def owner_rules(flag: str, ident: int) -> list[str]:
    return [
        f"-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner {flag} {ident} -j ISTIO_IN_REDIRECT",
        f"-A ISTIO_OUTPUT -o lo -m owner ! {flag} {ident} -j RETURN",
        f"-A ISTIO_OUTPUT -m owner {flag} {ident} -j RETURN",
    ]


PROXY_1337 = owner_rules("--uid-owner", 1337) + owner_rules("--gid-owner", 1337)


def parse(argv: list[str]) -> CaptureConfig:
    p = argparse.ArgumentParser()
    iptables.add_capture_flags(p)
    return capture_config(p.parse_args(argv))


def body(cfg: CaptureConfig, table: str = "*nat") -> list[str]:
    lines = rules(cfg).splitlines()
    start = lines.index(table)
    end = lines.index("COMMIT", start)
    return [ln for ln in lines[start + 1:end] if not ln.startswith(":")]


def test_the_injectors_default_args_capture_everything_but_the_proxys_own_ports():
    assert body(parse(INJECTOR_DEFAULT)) == [
        *HEAD,
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        *(f"-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN" for port in (15090, 15021, 15020)),  # -d, in order
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
        "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
        *PROXY_1337,
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
    ]
    text = rules(parse(INJECTOR_DEFAULT))
    assert text.startswith("*nat\n:ISTIO_INBOUND - [0:0]\n:ISTIO_REDIRECT - [0:0]\n:ISTIO_IN_REDIRECT - [0:0]\n"
                           ":ISTIO_OUTPUT - [0:0]\n")
    assert text.endswith("COMMIT\n") and "*mangle" not in text


def test_inbound_ports_include_redirects_only_those_ports():
    # golden inbound-ports-include: -b 32000,31000 (no -i: no outbound capture)
    assert body(parse(["-b", "32000,31000"])) == [
        *HEAD,
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A ISTIO_INBOUND -p tcp --dport 32000 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_INBOUND -p tcp --dport 31000 -j ISTIO_IN_REDIRECT",
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
        "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
        *PROXY_1337,
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
    ]


def test_empty_inbound_ports_capture_no_inbound_traffic():
    assert not [r for r in body(parse(["-b", "", "-i", "*"])) if "PREROUTING" in r]


def test_outbound_ports_include_and_exclude():
    # goldens outbound-ports-include (-q 32000,31000) and outbound-ports-exclude (-o 22,80,443)
    got = body(parse(["-q", "32000,31000", "-o", "22,80,443"]))
    assert got[got.index("-A OUTPUT -p tcp -j ISTIO_OUTPUT") + 1] == \
        "-A ISTIO_OUTPUT -p tcp -m multiport --dports 22,80,443 -j RETURN"
    assert got[-3:] == [
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -p tcp --dport 32000 -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT -p tcp --dport 31000 -j ISTIO_REDIRECT",
    ]


def test_ip_ranges_and_several_proxy_users_and_groups():
    # golden ip-range without DNS capture: -u 3,4 -g 1,2 -i 9.9.0.0/16 -x 1.1.0.0/16
    got = body(parse(["-u", "3,4", "-g", "1,2", "-i", "9.9.0.0/16", "-x", "1.1.0.0/16"]))
    assert got == [
        *HEAD,
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
        "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
        *owner_rules("--uid-owner", 3), *owner_rules("--uid-owner", 4),
        *owner_rules("--gid-owner", 1), *owner_rules("--gid-owner", 2),
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -d 1.1.0.0/16 -j RETURN",
        "-A ISTIO_OUTPUT -d 9.9.0.0/16 -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT -j RETURN",
    ]


def test_gid_defaults_to_the_uid():
    assert parse(["-u", "2000"]).proxy_gids == (2000,)


def test_a_loopback_range_in_the_include_list_keeps_the_apps_own_loopback_calls_captured():
    # golden loopback-outbound-iprange: no "-o lo ... ! --uid-owner ... RETURN" rule
    got = body(parse(["-i", "127.1.2.0/24"]))
    assert not [r for r in got if "! --uid-owner" in r or "! --gid-owner" in r]
    assert got[-2:] == ["-A ISTIO_OUTPUT -d 127.1.2.0/24 -j ISTIO_REDIRECT", "-A ISTIO_OUTPUT -j RETURN"]


def test_kube_virt_interfaces_are_inserted_at_the_top_of_prerouting():
    # golden kube-virt-interfaces: -k eth1,eth2 -i '*'
    got = body(parse(["-k", "eth1,eth2", "-i", "*"]))
    assert got[:2] == ["-I PREROUTING 1 -i eth1 -j RETURN", "-I PREROUTING 1 -i eth2 -j RETURN"]
    assert got[-3:] == ["-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
                        "-I PREROUTING 1 -i eth1 -j ISTIO_REDIRECT", "-I PREROUTING 1 -i eth2 -j ISTIO_REDIRECT"]


def test_excluded_interfaces_are_left_alone_both_ways():
    got = body(parse(["-c", "eth1", "-b", "*", "-i", "*"]))
    assert got[:2] == ["-A PREROUTING -i eth1 -j RETURN", "-A OUTPUT -o eth1 -j RETURN"]
    assert got.index("-A PREROUTING -i eth1 -j RETURN") < got.index("-A PREROUTING -p tcp -j ISTIO_INBOUND")


def test_drop_invalid_adds_the_mangle_rule():
    assert body(parse(["--drop-invalid"]), "*mangle") == ["-A PREROUTING -m conntrack --ctstate INVALID -j DROP"]


def test_other_capture_ports():
    got = body(parse(["-p", "16001", "-z", "16006", "-b", "*", "-i", "*"]))
    assert "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001" in got
    assert "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006" in got


@pytest.mark.parametrize("argv, message", [
    (["-m", "TPROXY"], "-m 'TPROXY': only REDIRECT"),
    (["-i", "fd00::/8"], "-i 'fd00::/8': IPv6 ranges are not supported"),
    (["-x", "10.0.0.0/33"], "-x '10.0.0.0/33': not an IP range"),
    (["-x", "*"], "-x '*': a wildcard is not allowed"),
    (["-d", "http"], "-d 'http': not a port number"),
    (["-p", "70000"], "-p '70000': a port is 1-65535"),
    (["-u", "istio"], "-u 'istio': not a numeric id"),
    (["-c", "eth0;rm"], "-c 'eth0;rm': not a network interface name"),
    (["--force-iptables-binary", "/bin/sh"], "--force-iptables-binary '/bin/sh'"),
])
def test_bad_flags_are_refused_naming_the_flag(argv, message):
    with pytest.raises(CaptureError) as e:
        parse(argv)
    assert message in str(e.value)


def test_restore_command_waits_for_the_lock_and_keeps_other_rules():
    assert iptables.restore_command("iptables-legacy") == ["iptables-legacy-restore", "-w", "5", "--noflush"]

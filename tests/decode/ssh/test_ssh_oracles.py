"""SSH against Zeek's ssh.log baselines, suricata-verify's eve ssh checks and nDPI's SSH flow classification.

Run with -s to see the per-field agreement tables.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.decode.oracles import Agreement, Row, read_log
from tests.decode.ssh.common import NDPI, SURICATA, ZEEK, analyse, per_connection, require

pytestmark = pytest.mark.oracle

#: Baseline directory -> trace, from the btest scripts of zeek/zeek testing/btest/scripts/base/protocols/ssh/*.zeek
#: (not staged; each pairing was confirmed by its connection tuples).
ZEEK_CASES = {
    "basic": "ssh.pcap",
    "curve25519_kex": "ssh_kex_curve25519.pcap",
    "dh_group18_kex": "ssh_kex_dh_group18.pcap",
    "half-duplex-client": "ssh.client-side-half-duplex.pcap",
    "half-duplex-server": "ssh.server-side-half-duplex.pcap",
    "mlkem_kex": "ssh_kex_mlkem.pcap",
    "pre-banner": "server-pre-banner-data.pcap",
    "ssh_version_199": "ssh_version_199.pcap",
}
ZEEK_FIELDS = ("client", "server", "version", "kex_alg", "host_key_alg", "cipher_alg", "mac_alg", "compression_alg")


def _ours(tmp_path: Path, capture: Path) -> list[Row]:
    rows, _, _ = analyse(tmp_path, capture)
    out = []
    for (client_ip, client_port, server_ip, server_port), flow in per_connection(rows).items():
        versions = [flow.get("client_proto_version"), flow.get("server_proto_version")]
        # Zeek's version field (ssh/main.zeek): 2 if both sides speak SSH-2 (1.99 counts as 2), 1 if both SSH-1.
        major = {v if v is None else ("2" if v in ("2.0", "1.99") else "1") for v in versions}
        version = major.pop() if len(major) == 1 else None
        out.append(
            {
                "id": f"{client_ip}:{client_port}>{server_ip}:{server_port}",
                "version": version,
                **{name: flow.get(name) for name in ZEEK_FIELDS if name != "version"},  # type: ignore[misc]
            }
        )
    return out


def _zeek_log(path: Path) -> list[Row]:
    """A Zeek TSV log, or the zeek-cut form some baselines use (a plain header line instead of #fields)."""
    rows = read_log(path)
    if rows and "id.orig_h" in rows[0]:
        return rows
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    names = lines[0].split("\t")
    return [{n: None if v == "-" else v for n, v in zip(names, line.split("\t"), strict=False)} for line in lines[1:]]


def test_zeek_ssh_log(tmp_path: Path) -> None:
    require(ZEEK)
    agreement = Agreement(ZEEK_FIELDS)
    for case, trace in ZEEK_CASES.items():
        theirs = _zeek_log(ZEEK / "Baseline" / f"scripts.base.protocols.ssh.{case}" / "ssh.log")
        for row in theirs:
            row["id"] = f"{row['id.orig_h']}:{row['id.orig_p']}>{row['id.resp_h']}:{row['id.resp_p']}"
            if row.get("version") is None:
                row["version"] = None  # Zeek leaves it unset for half-duplex connections: nothing to compare
        ours = _ours(tmp_path, ZEEK / "Traces/ssh" / trace)
        agreement.score(ours, theirs, key=lambda r: r["id"])
    print(agreement.report("Zeek ssh.log"))
    assert agreement.unmatched_ours == 0 and agreement.unmatched_theirs == 0
    for name in ZEEK_FIELDS:
        assert agreement.ratio(name) >= 0.99, agreement.report("Zeek ssh.log")


SURICATA_CASES = sorted(p.parent.name for p in SURICATA.glob("ssh-*/test.yaml")) if SURICATA.exists() else []
#: eve.json key -> our per-connection field.
EVE = {
    "ssh.client.proto_version": "client_proto_version",
    "ssh.client.software_version": "client_software_version",
    "ssh.server.proto_version": "server_proto_version",
    "ssh.server.software_version": "server_software_version",
    "ssh.client.hassh.hash": "client_hassh",
    "ssh.client.hassh.string": "client_hassh_algorithms",
    "ssh.server.hassh.hash": "server_hassh",
    "ssh.server.hassh.string": "server_hassh_algorithms",
}


def test_suricata_eve_ssh(tmp_path: Path) -> None:
    if not SURICATA_CASES:
        pytest.skip(f"research data missing: {SURICATA}")
    agreement = Agreement(tuple(EVE))
    checked = 0
    for case in SURICATA_CASES:
        spec = yaml.safe_load((SURICATA / case / "test.yaml").read_text())
        args = json.dumps(spec.get("args", ""))
        if "hassh=no" in args or "hassh: no" in args:
            continue  # hassh disabled: Suricata logs no hashes, but the banners still compare below
        captures = sorted((SURICATA / case).glob("*.pcap"))
        if not captures:
            continue
        rows, _, _ = analyse(tmp_path, captures[0])
        flows = list(per_connection(rows).values())
        for check in spec.get("checks", []) or []:
            found = check.get("filter") if isinstance(check, dict) else None
            if not found or found.get("match", {}).get("event_type") != "ssh":
                continue
            if "lt-version" in (found.get("requires") or {}):
                continue
            wanted = {k: str(v) for k, v in found["match"].items() if k in EVE}
            if not wanted:
                continue
            checked += 1
            mine = [{k: flow.get(EVE[k]) for k in wanted} for flow in flows]
            best = max(mine, key=lambda m: sum(m[k] == v for k, v in wanted.items()), default={})
            agreement._compare({k: best.get(k) if best.get(k) is not None else "(none)" for k in wanted}, wanted)  # type: ignore[arg-type]
    print(agreement.report(f"suricata-verify eve ssh ({checked} checks)"))
    for name in EVE:
        assert agreement.ratio(name) >= 0.99, agreement.report("suricata-verify")


FLOW_LINE = re.compile(r"TCP \[?([0-9a-f.:]+?)\]?:(\d+) <?-> \[?([0-9a-f.:]+?)\]?:(\d+) .*\[proto: [0-9.]+/SSH")


NDPI_FIELDS = ("banners", "client_hassh", "server_hassh")


@pytest.mark.parametrize("name", ["ssh.pcap", "ssh_unidirectional.pcap"])
def test_ndpi_ssh_flows_are_claimed(tmp_path: Path, name: str) -> None:
    """Every flow nDPI classifies SSH is claimed; its banners and HASSH-C/HASSH-S agree with ours.

    The banners are compared as a pair: nDPI names the first banner of a flow "Hostname/SNI" (the client's), so in
    ssh.pcap flow 1, where the server speaks first (RFC 4253 section 4.2 lets either side), it labels
    172.16.238.168:22's SSH-2.0-OpenSSH_5.3 the client's. tshark (frame 4, source port 22) confirms the server sent
    it; its HASSH-C, computed from the real client KEXINIT, agrees with ours.
    """
    capture = require(NDPI / "pcap" / name)
    result = require(NDPI / "result" / f"{name}.out").read_text()
    expected: dict[frozenset[tuple[str, int]], Row] = {}
    for line in result.splitlines():
        found = FLOW_LINE.search(line)
        if found:
            facts = dict(re.findall(r"\[(Hostname/SNI|Server|HASSH-C|HASSH-S): ([^\]]*)\]", line))
            expected[frozenset([(found[1], int(found[2])), (found[3], int(found[4]))])] = {
                "banners": " | ".join(sorted(filter(None, [facts.get("Hostname/SNI"), facts.get("Server")]))),
                "client_hassh": facts.get("HASSH-C", "").lower() or None,
                "server_hassh": facts.get("HASSH-S", "").lower() or None,
            }
    rows, _, _ = analyse(tmp_path, capture)
    flows = {frozenset([(k[0], k[1]), (k[2], k[3])]): v for k, v in per_connection(rows).items()}
    agreement = Agreement(NDPI_FIELDS)
    for key, theirs in expected.items():
        mine = {n: flows.get(key, {}).get(n) for n in NDPI_FIELDS}
        flow = flows.get(key, {})
        mine["banners"] = " | ".join(sorted(str(flow[n]) for n in ("client", "server") if flow.get(n)))
        agreement._compare(mine, theirs)  # type: ignore[arg-type]
    print(f"nDPI {name}: {len(expected.keys() & flows.keys())}/{len(expected)} SSH flows claimed")
    print(agreement.report(f"nDPI {name}"))
    assert expected and expected.keys() <= flows.keys()
    for field in NDPI_FIELDS:
        assert agreement.ratio(field) >= 0.99, agreement.report(name)

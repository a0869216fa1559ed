"""The policy's setpoints section: safe bounds of written values, validated with line and key path."""

from __future__ import annotations

from quaywatch.policy.load import load_policy_text

BASE = """zones:
- name: weather
  cidrs: [10.70.0.0/28]
setpoints:
"""


def test_a_valid_setpoint_is_loaded_with_its_bounds() -> None:
    policy, problems = load_policy_text(
        BASE + "- {name: wind-threshold, targets: [10.70.0.10], protocol: modbus, address: 41, min: 0, max: 400}\n"
    )
    assert problems == []
    (setpoint,) = policy.setpoints
    assert (setpoint.name, setpoint.address, setpoint.minimum, setpoint.maximum) == ("wind-threshold", 41, 0.0, 400.0)
    assert str(setpoint.targets.networks[0]) == "10.70.0.10/32"
    assert policy.counts()["setpoints"] == 1


def test_every_setpoint_mistake_names_its_line_and_key() -> None:
    text = BASE + (
        "- {name: a, targets: [10.70.0.10], protocol: dnp4, address: 41, max: 1}\n"
        "- {name: b, targets: [10.70.0.10], protocol: modbus, address: 70000, min: 0}\n"
        "- {name: c, targets: [10.70.0.10], protocol: modbus, address: 1, min: 5, max: 1}\n"
        "- {name: d, targets: [10.70.0.10], protocol: modbus, address: 2}\n"
        "- {name: e, targets: [10.70.0.10], protocol: modbus, address: 3, max: high, limit: 3}\n"
    )
    policy, problems = load_policy_text(text)
    found = {(problem.line, problem.path) for problem in problems}
    assert found == {
        (5, "setpoints[0].protocol"),
        (6, "setpoints[1].address"),
        (7, "setpoints[2].max"),
        (8, "setpoints[3]"),
        (9, "setpoints[4].limit"),
        (9, "setpoints[4].max"),
    }
    assert any("max 1 is below min 5" in problem.message for problem in problems)
    assert policy.setpoints == ()  # none of them is usable as written (e has an unknown key and a bad bound)


def test_iec104_dnp3_and_opcua_setpoints_name_their_value_in_their_own_terms() -> None:
    policy, problems = load_policy_text(
        BASE + "- {name: crane-speed, targets: [10.70.0.10], protocol: iec104, address: 16777215, max: 2.5}\n"
        "- {name: pump-flow, targets: [10.70.0.10], protocol: dnp3, address: 19, min: 0, max: 50}\n"
        "- {name: hoist-limit, targets: [10.70.0.10], protocol: opcua, node: 'ns=2;s=Crane1.HoistSpeedLimit', max: 3}\n"
    )
    assert problems == []
    iec104, dnp3, opcua = policy.setpoints
    assert (iec104.protocol, iec104.address, iec104.maximum) == ("iec104", 16_777_215, 2.5)
    assert (dnp3.protocol, dnp3.address, dnp3.minimum) == ("dnp3", 19, 0.0)
    assert (opcua.protocol, opcua.node, opcua.maximum) == ("opcua", "ns=2;s=Crane1.HoistSpeedLimit", 3.0)


def test_a_setpoint_located_the_wrong_way_for_its_protocol_is_reported_and_left_out() -> None:
    text = BASE + (
        "- {name: a, targets: [10.70.0.10], protocol: opcua, address: 41, max: 1}\n"
        "- {name: b, targets: [10.70.0.10], protocol: dnp3, node: 'ns=1;i=5', max: 1}\n"
        "- {name: c, targets: [10.70.0.10], protocol: iec104, address: 16777216, max: 1}\n"
        "- {name: d, targets: [10.70.0.10], protocol: iec104, address: 7, unit_id: 1, max: 1}\n"
        "- {name: e, targets: [10.70.0.10], protocol: modbus, max: 1}\n"
    )
    policy, problems = load_policy_text(text)
    found = {(problem.line, problem.path) for problem in problems}
    assert found == {
        (5, "setpoints[0].address"),
        (5, "setpoints[0]"),  # and no node
        (6, "setpoints[1].node"),
        (6, "setpoints[1]"),  # and no address
        (7, "setpoints[2].address"),
        (8, "setpoints[3].unit_id"),
        (9, "setpoints[4]"),
    }
    assert [setpoint.name for setpoint in policy.setpoints] == ["d"]  # usable; its stray unit_id is reported

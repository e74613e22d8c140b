"""The one converter: Kubernetes Node JSON <-> k3net's model, lossless, RFC 3339 'Z' times."""

from __future__ import annotations

import copy
import datetime as dt
import json

import pytest

from k3net.convert import (
    InvalidNode,
    format_time,
    format_time_precise,
    node_from_dict,
    node_from_json,
    node_to_dict,
    node_to_json,
    parse_time,
)

# A Node as the Go components (or kubectl) could store it, with keys k3net has no field for at
# every level. Timestamps are whole seconds, as Kubernetes' metav1.Time writes them.
GO_NODE = {
    "apiVersion": "v1",
    "kind": "Node",
    "x-top": {"nested": [1, 2, {"deep": True}]},
    "metadata": {
        "name": "worker-1",
        "uid": "node-worker-1",
        "namespace": "",
        "resourceVersion": "42",
        "creationTimestamp": "2026-11-29T10:21:14Z",
        "labels": {"kubernetes.io/hostname": "worker-1", "team": "blue"},
        "annotations": {"k3.network/lastSeen": "2026-11-29T10:21:14.123456Z", "note": "x"},
        "finalizers": ["k3/cleanup"],
        "ownerReferences": [{"kind": "Machine", "name": "m1"}],
        "generation": 7,
    },
    "spec": {
        "podCIDR": "10.42.0.0/24",
        "taints": [{"key": "k", "effect": "NoSchedule"}],
        "unschedulable": False,
    },
    "status": {
        "phase": "Running",
        "addresses": [
            {"type": "Hostname", "address": "worker-1", "x-addr": 1},
            {"type": "InternalIP", "address": "192.168.1.10"},
            {"type": "ExternalDNS", "address": "w1.example.org"},
        ],
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "PeerAlive",
                "message": "peer answered a probe",
                "lastHeartbeatTime": "2026-11-29T10:21:14Z",
                "lastTransitionTime": "2026-11-29T10:00:00Z",
                "x-cond": {"a": None},
            },
            {"type": "DiskPressure", "status": "False", "severity": "low"},
        ],
        "capacity": {"cpu": "4", "memory": "8Gi"},
        "allocatable": {"cpu": "3500m"},
        "nodeInfo": {"kubeletVersion": "v1.30.0", "machineID": "abc", "x-info": "kept"},
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
    },
}


def test_round_trip_keeps_every_key_at_every_level() -> None:
    original = copy.deepcopy(GO_NODE)
    assert node_to_dict(node_from_dict(original)) == GO_NODE
    assert original == GO_NODE  # reading does not mutate the input


def test_json_round_trip_is_lossless() -> None:
    node = node_from_json(json.dumps(GO_NODE))
    assert json.loads(node_to_json(node)) == GO_NODE
    again = node_from_json(node_to_json(node).encode())
    assert node_to_dict(again) == GO_NODE


def test_parsed_node_exposes_what_k3net_reads() -> None:
    node = node_from_dict(GO_NODE)
    assert node.name == "worker-1"
    assert node.metadata.resource_version == "42"
    assert node.ready_status == "True"
    assert not node.managed  # no k3.network/managed label
    ready = node.condition("Ready")
    assert ready is not None
    assert ready.last_transition_time == dt.datetime(2026, 11, 29, 10, 0, tzinfo=dt.UTC)
    assert [a.type for a in node.status.addresses] == ["Hostname", "InternalIP", "ExternalDNS"]


def test_wire_names_are_camel_case() -> None:
    out = node_to_dict(node_from_dict(GO_NODE))
    assert "apiVersion" in out and "api_version" not in out
    assert "resourceVersion" in out["metadata"]
    assert "lastTransitionTime" in out["status"]["conditions"][0]
    assert "extra" not in out and "extra" not in out["metadata"]


def test_unset_optional_fields_are_left_out() -> None:
    out = node_to_dict(node_from_dict({"metadata": {"name": "a"}}))
    assert "uid" not in out["metadata"]
    assert "resourceVersion" not in out["metadata"]
    assert "creationTimestamp" not in out["metadata"]
    assert "phase" not in out["status"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-29T10:21:14Z", dt.datetime(2026, 11, 29, 10, 21, 14, tzinfo=dt.UTC)),
        # Go's time.RFC3339Nano: up to nine fraction digits
        ("2026-11-29T10:21:14.123456789Z", dt.datetime(2026, 11, 29, 10, 21, 14, 123456, tzinfo=dt.UTC)),
        ("2026-11-29T10:21:14.5Z", dt.datetime(2026, 11, 29, 10, 21, 14, 500000, tzinfo=dt.UTC)),
        ("2026-11-29T12:21:14+02:00", dt.datetime(2026, 11, 29, 10, 21, 14, tzinfo=dt.UTC)),
        ("2026-11-29T05:21:14-05:00", dt.datetime(2026, 11, 29, 10, 21, 14, tzinfo=dt.UTC)),
    ],
)
def test_parse_time_accepts_rfc3339(text: str, expected: dt.datetime) -> None:
    parsed = parse_time(text)
    assert parsed == expected
    assert parsed.utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize("text", ["2026-11-29T10:21:14", "2026-11-29", "yesterday", ""])
def test_parse_time_refuses_times_without_zone(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time(text)


def test_times_are_written_in_utc_with_z() -> None:
    berlin = dt.timezone(dt.timedelta(hours=1))
    when = dt.datetime(2026, 11, 29, 11, 21, 14, 123456, tzinfo=berlin)
    assert format_time(when) == "2026-11-29T10:21:14Z"
    assert format_time_precise(when) == "2026-11-29T10:21:14.123456Z"


def test_nanosecond_and_offset_timestamps_are_normalised_on_write() -> None:
    data = {
        "metadata": {"name": "a", "creationTimestamp": "2026-11-29T12:21:14.987654321+02:00"},
        "status": {"conditions": [
            {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-11-29T10:21:14.1Z"},
        ]},
    }
    out = node_to_dict(node_from_dict(data))
    assert out["metadata"]["creationTimestamp"] == "2026-11-29T10:21:14Z"
    assert out["status"]["conditions"][0]["lastHeartbeatTime"] == "2026-11-29T10:21:14Z"


INVALID = [
    pytest.param([], id="not-an-object"),
    pytest.param(None, id="null"),
    pytest.param("node", id="string"),
    pytest.param({}, id="no-metadata"),
    pytest.param({"metadata": {}}, id="no-name"),
    pytest.param({"metadata": {"name": None}}, id="null-name"),
    pytest.param({"metadata": ["a"]}, id="metadata-not-object"),
    pytest.param({"metadata": {"name": "a"}, "status": []}, id="status-not-object"),
    pytest.param({"metadata": {"name": "a"}, "status": {"addresses": 5}}, id="addresses-number"),
    pytest.param({"metadata": {"name": "a"}, "status": {"conditions": [1]}}, id="condition-number"),
    pytest.param({"metadata": {"name": "a"}, "status": {"conditions": [{"status": "True"}]}},
                 id="condition-without-type"),
    pytest.param({"metadata": {"name": "a", "creationTimestamp": "garbage"}}, id="bad-time"),
    pytest.param({"metadata": {"name": "a", "creationTimestamp": 1700000000}}, id="time-number"),
    pytest.param({"metadata": {"name": "a", "creationTimestamp": "2026-11-29T10:21:14"}},
                 id="time-without-zone"),
    pytest.param(
        {"metadata": {"name": "a"}, "status": {"conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-29"}]}},
        id="condition-date-only",
    ),
]


@pytest.mark.parametrize("data", INVALID)
def test_invalid_input_is_invalid_node(data: object) -> None:
    with pytest.raises(InvalidNode):
        node_from_dict(data)


@pytest.mark.parametrize("raw", ["", "{", "[1", b"\xff\xfe", "not json"])
def test_invalid_json_is_invalid_node(raw: str | bytes) -> None:
    with pytest.raises(InvalidNode):
        node_from_json(raw)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"metadata": {"name": "a", "labels": "abc"}}, id="labels-string"),
        pytest.param({"metadata": {"name": "a", "annotations": [1, 2]}}, id="annotations-list"),
        pytest.param({"metadata": {"name": "a"}, "spec": "x"}, id="spec-string"),
    ],
)
def test_mapping_field_with_wrong_type_is_invalid_node(data: object) -> None:
    with pytest.raises(InvalidNode):
        node_from_dict(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"metadata": {"name": 5}}, id="name-number"),
        pytest.param({"metadata": {"name": "a", "labels": {"team": None}}}, id="label-null"),
        pytest.param({"metadata": {"name": "a", "annotations": {"n": 1}}}, id="annotation-number"),
        pytest.param(
            {"metadata": {"name": "a"}, "status": {"conditions": [{"type": "Ready", "status": True}]}},
            id="ready-status-bool",
        ),
    ],
)
def test_wrong_scalar_types_are_invalid_node(data: object) -> None:
    with pytest.raises(InvalidNode):
        node_from_dict(data)

"""The one converter between k3net's attrs model and the Kubernetes JSON form.

- Field names are camelCase on the wire (`resource_version` <-> `resourceVersion`).
- Timestamps are RFC 3339 in UTC with a `Z`, whole seconds (as Kubernetes' `metav1.Time`). They
  are read by `core.parse.timestamp` (the form only, any year: a Node that a host without a set
  clock wrote in 1970 is still a Node; its age is judged where it is used).
- Lossless: keys the model has no field for are kept in the object's `extra` and written back
  where they were, so a Node that went through k3net keeps everything it carried.
- `None` fields are left out, as Go's `omitempty` does.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

import attrs
import cattrs

from k3net.core import parse
from k3net.model import Node


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def format_time(value: dt.datetime) -> str:
    """RFC 3339, UTC, whole seconds: `2026-11-29T10:21:14Z`."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_time_precise(value: dt.datetime) -> str:
    """RFC 3339, UTC, with the fraction: `2026-11-29T10:21:14.123456Z`."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> dt.datetime:
    """Any RFC 3339 time (Go's `time.RFC3339Nano` included) as an aware UTC datetime; ValueError
    for anything else (`core.parse.timestamp`, the one reader of times)."""
    parsed = parse.timestamp(value)
    if isinstance(parsed, parse.Foreign):
        raise ValueError(str(parsed))
    return parsed


def _structure_time(value: Any, _type: Any) -> dt.datetime:
    if not isinstance(value, str):
        raise TypeError(f"expected an RFC 3339 string, got {type(value).__name__}")
    return parse_time(value)


def _structure_str(value: Any, _type: Any) -> str:
    # cattrs' default is str(value), which would turn a stored `true` into "True" (and read it
    # as Ready) or null into "None": a Node with the wrong types is not a Node.
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _structure_mapping(value: Any, type_: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    key_type, value_type = getattr(type_, "__args__", (str, Any))
    if value_type is str:
        for key, item in value.items():
            if not isinstance(item, str):
                raise TypeError(f"{key}: expected a string, got {type(item).__name__}")
    return dict(value)


def _is_mapping(type_: Any) -> bool:
    return getattr(type_, "__origin__", None) is dict


def _lossless_hooks(converter: cattrs.Converter, cls: type) -> tuple[Any, Any]:
    attrs.resolve_types(cls)
    fields = [f for f in attrs.fields(cls) if f.name != "extra"]
    wire = {camel(f.name): f for f in fields}

    def structure(data: Any, _type: Any) -> Any:
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            field = wire.get(key)
            if field is None:
                extra[key] = value
            elif value is not None:
                kwargs[field.name] = converter.structure(value, field.type)
        return cls(**kwargs, extra=extra)

    def unstructure(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, field in wire.items():
            value = getattr(obj, field.name)
            if value is not None:
                out[key] = converter.unstructure(value)
        for key, value in obj.extra.items():
            out.setdefault(key, value)
        return out

    return structure, unstructure


def make_converter() -> cattrs.Converter:
    converter = cattrs.Converter()
    converter.register_structure_hook(dt.datetime, _structure_time)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook_func(_is_mapping, _structure_mapping)
    converter.register_unstructure_hook(dt.datetime, format_time)

    def is_model(cls: Any) -> bool:
        return attrs.has(cls) and any(f.name == "extra" for f in attrs.fields(cls))

    converter.register_structure_hook_factory(
        is_model, lambda cls: _lossless_hooks(converter, cls)[0]
    )
    converter.register_unstructure_hook_factory(
        is_model, lambda cls: _lossless_hooks(converter, cls)[1]
    )
    return converter


converter = make_converter()


class InvalidNode(ValueError):
    """Stored or received data that is not a Node k3net can read."""


def node_from_dict(data: Any) -> Node:
    try:
        return converter.structure(data, Node)
    except (
        cattrs.BaseValidationError, TypeError, ValueError, KeyError, AttributeError,
        RecursionError,
    ) as exc:
        raise InvalidNode(f"not a v1/Node: {exc}") from exc


def node_to_dict(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = converter.unstructure(node)
    return out


def node_from_json(raw: str | bytes) -> Node:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidNode(f"not JSON: {exc}") from exc
    except RecursionError:
        raise InvalidNode("not JSON k3net can read: nested too deeply") from None
    return node_from_dict(data)


def node_to_json(node: Node) -> str:
    return json.dumps(node_to_dict(node), separators=(",", ":"))


def node_list(nodes: Iterable[Node]) -> dict[str, Any]:
    """A Kubernetes `NodeList`, as `kubectl get nodes -o json` prints it."""
    return {"apiVersion": "v1", "kind": "NodeList", "items": [node_to_dict(n) for n in nodes]}

"""Validation of names and TXT values that arrive from the LAN (untrusted input)."""

from __future__ import annotations

import re

# Kubernetes' DNS-1123 subdomain: lower-case alphanumeric labels joined by '.', '-' inside.
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
MAX_NAME = 253
# The longest TXT value k3net reads (node names are the longest legitimate ones).
MAX_TXT_VALUE = 255


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a Node name, or None if it can."""
    if not name:
        return "empty name"
    if len(name) > MAX_NAME:
        return f"name longer than {MAX_NAME} characters"
    if _SUBDOMAIN.fullmatch(name) is None:
        return "not a DNS-1123 subdomain (lower case letters, digits, '-' and '.')"
    return None


def is_valid_name(name: str) -> bool:
    return name_problem(name) is None

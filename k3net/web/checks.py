"""Health checks answered as the Kubernetes components answer them (pure: no I/O, no clock).

    GET /livez      the process serves HTTP (check `ping`)
    GET /readyz     the agent does its job: `store` answers, `mdns` advertisement registered,
                    `http` not shutting down
    GET /healthz    `200 ok` while the process runs, as the Go agent (kept for compatibility)

Both /livez and /readyz answer `200 ok` when every check passes and 503 when one fails, with
one line per failed check. `?verbose` lists every check, `[+]name ok` or `[-]name failed:
reason`, then `readyz check passed|failed`; `?exclude=name` (repeatable) leaves a check out, and
`/readyz/<name>` asks one check alone. 503 (not Kubernetes' 500): the agent is up but not
ready, which is what a load balancer or supervisor wants to know.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from urllib.parse import parse_qs

# A check returns None when it passes, else the reason it fails (one line).
Check = Callable[[], str | None]

TEXT = "text/plain; charset=utf-8"


def answer(
    endpoint: str, checks: Mapping[str, Check], query: bytes, only: str | None = None
) -> tuple[int, str, bytes]:
    """The answer of `/<endpoint>[/<only>]?<query>` as (status, content type, body)."""
    if only is not None:
        if only not in checks:
            return 404, TEXT, f"no check {only!r} in /{endpoint}\n".encode()
        problem = checks[only]()
        if problem is None:
            return 200, TEXT, b"ok\n"
        return 503, TEXT, f"[-]{only} failed: {problem}\n".encode()

    params = parse_qs(query.decode("latin-1"), keep_blank_values=True)
    verbose = "verbose" in params
    excluded = {name.strip() for value in params.get("exclude", []) for name in value.split(",")}
    lines, failed = [], False
    for name, check in checks.items():
        if name in excluded:
            lines.append(f"[+]{name} excluded: ok")
            continue
        problem = check()
        if problem is None:
            lines.append(f"[+]{name} ok")
        else:
            failed = True
            lines.append(f"[-]{name} failed: {problem}")
    unknown = sorted(excluded - set(checks) - {""})
    if unknown:
        lines.append(f"warn: some health checks cannot be excluded: no matches for "
                     f"{', '.join(repr(n) for n in unknown)}")
    if not failed and not verbose:
        return 200, TEXT, b"ok\n"
    if failed and not verbose:
        lines = [line for line in lines if line.startswith("[-]")]
    lines.append(f"{endpoint} check {'failed' if failed else 'passed'}")
    return (503 if failed else 200), TEXT, ("\n".join(lines) + "\n").encode()

"""Write the README's table of `k3net run` flags from their declarations (k3net.settings), or,
with --check, say whether it is up to date (exit 1 if not). tests/test_settings.py checks it too.

    python scripts/flag_table.py          # rewrite the table in README.md
    python scripts/flag_table.py --check
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from k3net.settings import flag_table

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN = "<!-- flags: written by scripts/flag_table.py from k3net/settings.py; edit them there -->\n"
END = "<!-- end of flags -->\n"


def with_table(text: str) -> str:
    """The README's text with the table between BEGIN and END as the flags make it."""
    head, begin, rest = text.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"README.md has no {BEGIN.strip()} ... {END.strip()} block")
    return head + BEGIN + flag_table() + END + tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, change nothing")
    args = parser.parse_args()
    text = README.read_text()
    new = with_table(text)
    if args.check:
        if new != text:
            print("README.md: the flag table is out of date (run scripts/flag_table.py)",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Files that hold secrets (the cluster key, a config file with a store password): who may read
them, and how much secret a key holds. Pure: the callers read the files.

Mode. A secret file is private when neither its group nor others have any permission on it
(`chmod 600` or `400`), as ssh asks of a private key: a secret others can read is no secret,
and one others can write can be replaced. The owner is whoever runs k3net (root, the service's
user, or systemd's credential directory, which holds a copy readable by the service alone).

Key strength. A cluster key is the file's content without surrounding whitespace, used as it
is (the HMAC key). What it can hold at most depends on the characters it is written in, so
that a long key in a small alphabet is not mistaken for a strong one:

| the key is written in | bits per character | at least, for 128 bits |
|---|---|---|
| hex digits (`openssl rand -hex 32`, `k3net keygen`) | 4 | 32 digits |
| base64 or base64url (`openssl rand -base64 32`; final `=` not counted) | 6 | 22 characters |
| other printable ASCII (a passphrase) | log2(95), about 6.57 | 20 characters |
| anything else (raw bytes) | 8 | 16 bytes |

This is an upper bound (`aaaa...` counts as much as a random key of that length): it refuses
keys too short to be strong, it cannot prove a long one random. `k3net keygen` writes 32 random
bytes as 64 hex digits: 256 bits.
"""

from __future__ import annotations

import math
import re
import stat

# A key that holds less than this could be guessed offline by an eavesdropper who saw one nonce
# and its proof: 128 bits is out of reach (the strength of AES-128).
MIN_KEY_BITS = 128

_HEX = re.compile(rb"[0-9a-fA-F]+")
_BASE64 = re.compile(rb"(?:[A-Za-z0-9+/]+|[A-Za-z0-9_-]+)={0,2}")
_PRINTABLE = re.compile(rb"[\x20-\x7e]+")


def exposure(mode: int, path: str) -> str | None:
    """Why a file of this `st_mode` is not private (one line, with the fix), or None if it is."""
    if mode & 0o077:
        return (f"permissions {stat.S_IMODE(mode):04o} let other users access it; "
                f"run chmod 600 {path}")
    return None


def key_bits(key: bytes) -> float:
    """The most randomness `key` can hold, in bits, judged by its alphabet (see above)."""
    if _HEX.fullmatch(key):
        return 4.0 * len(key)
    if _BASE64.fullmatch(key):
        return 6.0 * len(key.rstrip(b"="))
    if _PRINTABLE.fullmatch(key):
        return math.log2(95) * len(key)
    return 8.0 * len(key)

"""Certificates for test servers that speak TLS: a private CA, a server certificate for
127.0.0.1/localhost and a client certificate, made with the openssl command (Debian's openssl
package) in a directory of the test's own. Nothing here is meant for real use: the keys are
unencrypted and live as long as the test's temporary directory.

    certs = make_certs(tmp_path / "tls")
    certs.ca, certs.server_cert, certs.server_key, certs.client_cert, certs.client_key
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import attrs

OPENSSL = "openssl"
DAYS = "2"  # long enough for any test run, short enough that a stray copy is worthless


@attrs.frozen
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    # A CA that signed nothing here: a client trusting only it must refuse the server.
    other_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.decode()[-1000:]}")


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key.name, "-out",
             cert.name, "-days", DAYS, "-subj", f"/CN=k3net test {name}", cwd=directory)
    return cert, key


def _signed(directory: Path, name: str, ca: tuple[Path, Path], san: str, usage: str
            ) -> tuple[Path, Path]:
    key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
    ext = directory / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n"
                   "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key.name, "-out", csr.name,
             "-subj", f"/CN={name}", cwd=directory)
    _openssl("x509", "-req", "-in", csr.name, "-CA", ca[0].name, "-CAkey", ca[1].name,
             "-CAcreateserial", "-out", cert.name, "-days", DAYS, "-extfile", ext.name,
             cwd=directory)
    return cert, key


def make_certs(directory: Path) -> Certs:
    """A CA, a server certificate (127.0.0.1, ::1, localhost) and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "ca")
    other, _ = _ca(directory, "other-ca")
    server = _signed(directory, "server", ca, "IP:127.0.0.1,IP:::1,DNS:localhost",
                     "serverAuth")
    client = _signed(directory, "client", ca, "DNS:k3net-client", "clientAuth")
    for path in directory.iterdir():
        path.chmod(0o644)  # the servers may run as another user (mysql) in some set-ups
    return Certs(ca=ca[0], server_cert=server[0], server_key=server[1], client_cert=client[0],
                 client_key=client[1], other_ca=other)

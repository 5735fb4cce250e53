"""A throwaway PKI for TLS tests, made with the ``openssl`` command line (the same commands the
README's "Across hosts" section shows): a cluster CA, certificates for hosts, and the failure
cases (an expired certificate, one signed by another CA, one for another name)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str = "ca") -> Path:
    """A self-signed CA (EC P-256, a day long); returns its certificate's path."""
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN=beambridge test {name}",
             "-days", "1", cwd=folder)
    return folder / f"{name}.pem"


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path


def make_cert(folder: Path, name: str, *, ca: str = "ca", ips: tuple[str, ...] = ("127.0.0.1",),
              dns: tuple[str, ...] = ("localhost",), days: int = 1) -> Cert:
    """A certificate for ``ips``/``dns`` signed by ``ca``; ``days=-1`` makes one already expired."""
    # An address also as a DNS name: Erlang checks the host part of the node name as one
    # (``{server_name_indication, Host}``), OpenSSL's check for an address uses the IP entry.
    alt = ",".join([f"IP:{ip}" for ip in ips] + [f"DNS:{d}" for d in (*ips, *dns)])
    (folder / f"{name}.ext").write_text(
        f"subjectAltName={alt}\nextendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", str(days),
             "-extfile", f"{name}.ext", cwd=folder)
    return Cert(folder / f"{name}.pem", folder / f"{name}.key")


def optfile(path: Path, cert: Cert, cacert: Path, *, verify: bool = True,
            fail_if_no_peer_cert: bool = True, extra_client: str = "") -> Path:
    """An Erlang ``ssl_dist_optfile`` (Erlang and beambridge read the same file)."""
    v = "verify_peer" if verify else "verify_none"
    server = (f'{{certfile, "{cert.cert}"}}, {{keyfile, "{cert.key}"}}, {{cacertfile, "{cacert}"}}, '
              f"{{verify, {v}}}" + (", {fail_if_no_peer_cert, true}"
                                   if verify and fail_if_no_peer_cert else ""))
    client = (f'{{certfile, "{cert.cert}"}}, {{keyfile, "{cert.key}"}}, {{cacertfile, "{cacert}"}}, '
              f"{{verify, {v}}}" + extra_client)
    path.write_text(f"[{{server, [{server}]}},\n {{client, [{client}]}}].\n")
    return path

"""Credentials for a deployment with TLS and SuperNode authentication, made on this machine (``cryptography``,
which flwr depends on): a certificate authority, the SuperLink's certificate signed by it for the names it is
reached by, and one NIST P-384 key pair per SuperNode in OpenSSH format (what ``flwr supernode register`` and
``flower-supernode --auth-supernode-private-key`` read).

For a deployment across machines, make them with your organisation's CA instead; ``python -m pfedla.flower
local --tls`` uses these for a loopback run, and tests/test_flower.py checks that a node whose key the
SuperLink does not know is refused.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 30


@dataclass(frozen=True)
class Credentials:
    ca_cert: Path  # the SuperNodes' and the flwr CLI's root certificate
    server_cert: Path  # the SuperLink's certificate and key
    server_key: Path
    node_keys: tuple[tuple[Path, Path], ...]  # (private, public) per SuperNode, OpenSSH format


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def node_key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode's P-384 key pair in OpenSSH format: (``name``, ``name``.pub) in ``folder``."""
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH))
    return private, public


def _certificate(subject: str, public_key, issuer: x509.Name | None, signer: ec.EllipticCurvePrivateKey,
                 *extensions: tuple[x509.ExtensionType, bool]) -> x509.Certificate:
    """A certificate for ``subject`` (self-signed when ``issuer`` is None), valid from now for VALID_DAYS."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer or _name(subject))
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=VALID_DAYS)))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA384())


def make_credentials(folder: Path, nodes: int, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Credentials:
    """A CA, the SuperLink's certificate for ``hosts`` (IP addresses or DNS names), and ``nodes`` key pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, server_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca = _certificate("pfedla deployment CA", ca_key.public_key(), None, ca_key,
                      (x509.BasicConstraints(ca=True, path_length=0), True))
    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server = _certificate(hosts[0], server_key.public_key(), ca.subject, ca_key,
                          (x509.SubjectAlternativeName(names), False),
                          (x509.BasicConstraints(ca=False, path_length=None), True))
    ca_path, cert_path, key_path = folder / "ca.crt", folder / "server.pem", folder / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, key_path)
    keys = tuple(node_key_pair(folder, f"supernode{k}") for k in range(nodes))
    return Credentials(ca_path, cert_path, key_path, keys)

"""TLS certificates for a SuperLink, and SuperNode key pairs (the `cryptography` package comes with flwr).

``make_certs(dir, hosts)`` writes a CA and a server certificate it signed (``ca.pem``,
``server.pem``, ``server.key``): the SuperLink takes all three, the SuperNodes and the `flwr`
CLI trust ``ca.pem``. ``make_node_key(path)`` writes a SuperNode's key pair for SuperNode
authentication: the private key for the node, ``path.pub`` to register with the SuperLink.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

LOCAL_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Certs:
    """PEM files: a CA, and a server certificate it signed with its private key."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's key pair: `private` for `--auth-supernode-private-key`, `public` to register."""

    private: Path
    public: Path


def make_certs(directory: str | Path, hosts: Iterable[str] = LOCAL_HOSTS, *, days: int = 30) -> Certs:
    """Write ``ca.pem`` and ``server.pem``/``server.key`` (signed by that CA) into `directory`.

    The server certificate names every host as a subject alternative name: an IP address
    entry for an address, a DNS entry otherwise (clients check the IP entry for 127.0.0.1).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    start = datetime.now(UTC) - timedelta(minutes=5)  # tolerate a little clock skew
    validity = (start, start + timedelta(days=days))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_certificate(ca_key, validity)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _server_certificate(server_key.public_key(), list(hosts), ca_key, ca_cert.subject, validity)

    certs = Certs(ca=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server.key")
    certs.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    certs.cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    pkcs8 = serialization.PrivateFormat.PKCS8
    _write_private(certs.key, server_key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption()))
    return certs


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedcifar"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_certificate(key, validity: tuple[datetime, datetime]):
    """A self-signed CA certificate that may sign server certificates (and nothing below them)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    name = _name("fedcifar test CA")
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(public_key, hosts: list[str], ca_key, ca_name, validity: tuple[datetime, datetime]):
    """A TLS server certificate for `hosts` (IP or DNS subject alternative names), signed by the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    return (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0] if hosts else "fedcifar"))
        .issuer_name(ca_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def make_node_key(path: str | Path) -> NodeKey:
    """Write a NIST P-256 key pair in OpenSSH format: the private key at `path`, the public at PATH.pub.

    That is what `flower-supernode --auth-supernode-private-key` loads (`load_ssh_private_key`, an
    EC key) and what `flwr supernode register` takes (`load_ssh_public_key`, a NIST curve).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = Path(path)
    public = private.with_name(private.name + ".pub")
    private.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    openssh = serialization.PrivateFormat.OpenSSH
    _write_private(private, key.private_bytes(serialization.Encoding.PEM, openssh, serialization.NoEncryption()))
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
    )
    return NodeKey(private=private, public=public)


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only (0600 from the start, never world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)

"""A small self-signed PKI for tests and SIL: one CA, a server certificate, client certificates.

Made with the ``cryptography`` package (the ``[security]`` extra); keys are ECDSA P-256, written
PEM, unencrypted, with mode 0600. For a field site, use certificates from your own CA instead:
the broker configuration only needs the three file paths.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from heron_edge.errors import ConfigError

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "generating certificates needs the 'cryptography' package: pip install 'heron-edge[security]'"
    ) from exc

__all__ = ["CertificateAuthority", "IssuedCertificate", "make_ca"]

_DEFAULT_DAYS = 365


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the start (never briefly world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate and its private key, as PEM files."""

    cert_file: Path
    key_file: Path


class CertificateAuthority:
    """A self-signed CA kept in memory; :meth:`issue_server` and :meth:`issue_client` write PEM files."""

    def __init__(self, name: str, *, days: int = _DEFAULT_DAYS) -> None:
        if days < 1:
            raise ConfigError("certificate validity 'days' must be at least 1")
        self.days = days
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                              encipher_only=False, decipher_only=False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )

    def write_ca(self, cert_file: Path, key_file: Path | None = None) -> Path:
        """Write the CA certificate (and, if asked, its key, 0600) as PEM; returns the certificate path."""
        Path(cert_file).write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        if key_file is not None:
            _write_private(Path(key_file), self._key_pem(self._key))
        return Path(cert_file)

    def issue_server(
        self, common_name: str, names: Sequence[str], cert_file: Path, key_file: Path
    ) -> IssuedCertificate:
        """A server certificate whose subjectAltName lists ``names`` (DNS names or IP addresses)."""
        if not names:
            raise ConfigError("a server certificate needs at least one name (DNS name or IP address)")
        alt: list[x509.GeneralName] = []
        for name in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        extensions: list[tuple[x509.ExtensionType, bool]] = [
            (x509.SubjectAlternativeName(alt), False),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ]
        return self._issue(common_name, extensions, Path(cert_file), Path(key_file))

    def issue_client(self, common_name: str, cert_file: Path, key_file: Path) -> IssuedCertificate:
        """A client certificate (extendedKeyUsage clientAuth) with ``common_name`` as subject CN: for a site
        broker with ``require_certificate`` the CN is the MQTT username, i.e. the identity (give the username)."""
        usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
        return self._issue(common_name, [(usage, False)], Path(cert_file), Path(key_file))

    def _issue(self, common_name: str, extensions: list[tuple[x509.ExtensionType, bool]], cert_file: Path,
               key_file: Path) -> IssuedCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=self.days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                              encipher_only=False, decipher_only=False),
                critical=True,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(key_file, self._key_pem(key))
        return IssuedCertificate(cert_file, key_file)

    @staticmethod
    def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def make_ca(name: str = "heron-edge test CA", *, days: int = _DEFAULT_DAYS) -> CertificateAuthority:
    """A new self-signed CA (in memory until written)."""
    return CertificateAuthority(name, days=days)

"""A throw-away test PKI: one CA and server certificates for 127.0.0.1/localhost (tests only)."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


@dataclass
class TestPKI:
    __test__ = False  # not a pytest test class

    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate

    @classmethod
    def create(cls, name: str = "Casa test CA") -> "TestPKI":
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    def server_cert(self, hosts=("127.0.0.1", "localhost")) -> tuple[bytes, bytes]:
        """(cert PEM, key PEM) for a TLS server reachable under ``hosts``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        sans = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 30 * _DAY)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), False)
            .sign(self.ca_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)

    def write_cert_dir(self, directory: Path) -> Path:
        """An OpenSSL hashed CA directory (``<hash>.0``), as X509_CERT_DIR / xrd.tlsca certdir want."""
        directory.mkdir(parents=True, exist_ok=True)
        ca_file = directory / "casa-test-ca.pem"
        ca_file.write_bytes(self.ca_pem)
        digest = subprocess.run(
            ["openssl", "x509", "-hash", "-noout", "-in", str(ca_file)], check=True, capture_output=True, text=True
        ).stdout.strip()
        (directory / f"{digest}.0").write_bytes(self.ca_pem)
        return directory

    def bundle_with_system_cas(self, path: Path) -> Path:
        """System CA bundle + this CA (for programs that only trust the compiled-in bundle)."""
        system = Path("/etc/ssl/certs/ca-certificates.crt")
        path.write_bytes((system.read_bytes() if system.exists() else b"") + b"\n" + self.ca_pem)
        return path

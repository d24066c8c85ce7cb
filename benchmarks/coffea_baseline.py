"""The Coffea-Casa way of handing out credentials, reproduced as the baseline for Casa's benchmarks.

- :func:`coffea_casa_mint`: at every spawn three fresh RSA-2048 keys, a new self-signed RSA CA (its key written
  out "encrypted" with a literal password) and two RSA certificates, three HS256 JWTs without ``exp`` for one
  shared identity, one macaroon.
- :func:`coffea_pre_spawn_hook`: a ``Spawner.pre_spawn_hook`` doing that minting synchronously and creating the
  user's Secret with a blocking HTTP call to the Kubernetes API, on the hub's event loop (as Coffea-Casa's
  hub configuration does with the synchronous ``kubernetes`` client).

Used by bench_mint.py (minting alone) and bench_storm.py (a whole hub). Not code to run in production.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import urllib.request

import jwt
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from pymacaroons import Macaroon

SHARED_SECRET = b"k" * 32


def coffea_casa_mint(user: str) -> dict[str, bytes]:
    """The baseline recipe, reproduced: RSA CA + 2 RSA certs per spawn, non-expiring JWTs, one macaroon."""
    now = datetime.datetime.now(datetime.timezone.utc)
    out: dict[str, bytes] = {}
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"coffea-casa CA {user}")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(keys[0].public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(keys[0], hashes.SHA256())
    )
    out["ca.pem"] = ca.public_bytes(serialization.Encoding.PEM)
    out["ca.key"] = keys[0].private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"literal-password"),
    )
    for i, role in enumerate(("scheduler", "client"), start=1):
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, role)]))
            .issuer_name(ca_name)
            .public_key(keys[i].public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=365))
            .sign(keys[0], hashes.SHA256())
        )
        out[f"{role}.pem"] = cert.public_bytes(serialization.Encoding.PEM) + keys[i].private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    for name in ("xcache", "condor", "servicex"):
        out[name] = jwt.encode(
            {"sub": "shared-identity", "iss": "coffea-casa"}, SHARED_SECRET, algorithm="HS256"
        ).encode()
    m = Macaroon(location="site", identifier=user, key=SHARED_SECRET)
    m.add_first_party_caveat("activity:DOWNLOAD")
    out["macaroon"] = m.serialize().encode()
    return out


def _api_server() -> str:
    with open(os.environ["KUBECONFIG"]) as f:
        return yaml.safe_load(f)["clusters"][0]["cluster"]["server"].rstrip("/")


def _blocking_request(method: str, url: str, body: dict | None = None) -> int:
    request = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body else None,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def coffea_issue(api_server: str, namespace: str, user: str) -> str:
    """The recipe for one server, all blocking: mint, then delete and re-create the user's Secret."""
    name = f"coffea-{user}"
    files = coffea_casa_mint(user)
    base = f"{api_server}/api/v1/namespaces/{namespace}/secrets"
    _blocking_request("DELETE", f"{base}/{name}")
    _blocking_request(
        "POST",
        base,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "data": {k: base64.b64encode(v).decode() for k, v in files.items()},
        },
    )
    return name


def coffea_pre_spawn_hook(spawner) -> None:
    """:func:`coffea_issue` on the hub's event loop, as a pre_spawn_hook; mounts the Secret."""
    name = coffea_issue(_api_server(), spawner.namespace, spawner.user.name)
    spawner.volumes = [{"name": "coffea-certs", "secret": {"secretName": name}}]
    spawner.volume_mounts = [{"name": "coffea-certs", "mountPath": "/etc/cmsaf-secrets"}]

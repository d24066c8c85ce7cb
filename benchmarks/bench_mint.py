"""Per-login credential minting: Casa's full bundle vs the Coffea-Casa recipe, in the same process.

Coffea-Casa, at every spawn: three fresh RSA-2048 keys with a new self-signed CA and two certificates,
HS256 JWTs without expiry, and a macaroon. Casa: every credential kind enabled (WLCG ES256 token, macaroon,
HTCondor IDTOKEN, ServiceX token + config, three EC P-256 role certificates under the user's stable CA).

Run: .venv/bin/python benchmarks/bench_mint.py [--rounds N]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jwt  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from pymacaroons import Macaroon  # noqa: E402

from tests.support import make_minter  # noqa: E402


def coffea_casa_mint(user: str) -> dict[str, bytes]:
    """The baseline recipe, reproduced: RSA CA + 2 RSA certs per spawn, non-expiring JWTs, a macaroon."""
    now = datetime.datetime.now(datetime.timezone.utc)
    out = {}
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "coffea-casa CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(keys[0].public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(keys[0], hashes.SHA256()))
    out["ca.pem"] = ca.public_bytes(serialization.Encoding.PEM)
    out["ca.key"] = keys[0].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.BestAvailableEncryption(b"literal-password"))
    for i, role in enumerate(("scheduler", "client"), start=1):
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, role)]))
                .issuer_name(ca_name).public_key(keys[i].public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=365))
                .sign(keys[0], hashes.SHA256()))
        out[f"{role}.pem"] = cert.public_bytes(serialization.Encoding.PEM) + keys[i].private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    for name in ("xcache", "condor", "servicex"):
        out[name] = jwt.encode({"sub": "shared-identity", "iss": "coffea-casa"}, b"k" * 32, algorithm="HS256").encode()
    m = Macaroon(location="site", identifier=user, key=b"k" * 32)
    m.add_first_party_caveat("activity:DOWNLOAD")
    out["macaroon"] = m.serialize().encode()
    return out


def measure(fn, rounds: int) -> list[float]:
    samples = []
    for i in range(rounds):
        t0 = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - t0)
    return samples


def summary(name: str, samples: list[float]) -> str:
    ms = sorted(s * 1e3 for s in samples)
    p90 = ms[int(len(ms) * 0.9) - 1]
    return f"{name:<34} median {statistics.median(ms):8.3f} ms   p90 {p90:8.3f} ms   n={len(ms)}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2000, help="Casa mints to time (baseline: rounds/40)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        minter = make_minter(Path(tmp) / "keys")
        minter.load_keys()
        users = [f"user{i:05d}" for i in range(args.rounds)]
        cold = measure(lambda i: minter.mint(users[i]), min(args.rounds, 500))  # first login: CA derived
        warm = measure(lambda i: minter.mint(users[i % 500]), args.rounds)     # later logins / refreshes
        base = measure(lambda i: coffea_casa_mint(users[i]), max(20, args.rounds // 40))
    print(summary("Casa full bundle (first login)", cold))
    print(summary("Casa full bundle (refresh)", warm))
    print(summary("Coffea-Casa recipe (baseline)", base))
    ratio_cold = statistics.median(base) / statistics.median(cold)
    ratio_warm = statistics.median(base) / statistics.median(warm)
    print(f"baseline / Casa median: first login {ratio_cold:.0f}x, refresh {ratio_warm:.0f}x cheaper")
    print(f"target: >=100x cheaper and <=1 ms median -> "
          f"{'met' if ratio_warm >= 100 and statistics.median(warm) <= 1e-3 else 'NOT met'} (refresh path)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

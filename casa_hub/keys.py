"""Generate the hub's secrets: ``python -m casa_hub.keys {issuer,dask-ca,macaroon,servicex,condor} > FILE``.

Admins run this once and store the output as a Kubernetes Secret mounted into the hub pod only.
"""

from __future__ import annotations

import argparse
import base64
import secrets
import sys

from .credentials.htcondor import scramble_key_file
from .credentials.issuer import generate_issuer_key_pem


def generate(kind: str, algorithm: str = "ES256") -> bytes:
    if kind == "issuer":
        return generate_issuer_key_pem(algorithm)
    if kind == "dask-ca":
        return secrets.token_bytes(48)
    if kind == "macaroon":  # XRootD expects base64 text of the raw key
        return base64.b64encode(secrets.token_bytes(32)) + b"\n"
    if kind == "servicex":
        return secrets.token_urlsafe(48).encode()
    if kind == "condor":  # a scrambled pool password as condor_store_cred would write it; no NUL bytes
        password = secrets.token_urlsafe(32).encode()
        return scramble_key_file(password)
    raise ValueError(f"unknown key kind {kind!r}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["issuer", "dask-ca", "macaroon", "servicex", "condor"])
    parser.add_argument("--algorithm", choices=["ES256", "RS256"], default="ES256")
    args = parser.parse_args(argv)
    sys.stdout.buffer.write(generate(args.kind, args.algorithm))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

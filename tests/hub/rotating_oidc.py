"""The demo OIDC provider (casa_demo/oidc_provider.py) signing like a production provider that rotates keys.

What the demo provider does not do and this adds, for the key-rotation tests (tests/hub/test_faults_oidc.py):
id_tokens name their key (``kid``); the refresh grant returns a fresh id_token (OIDC Core 12.2, as Keycloak and
CILogon do); and test endpoints:

- ``POST /casa-test/rotate-key``: sign with a new key from now on, still publishing the old ones (a rotation);
- ``POST /casa-test/rogue-key``: sign with a key the JWKS never publishes (a forger holding the refresh token);
- ``POST /casa-test/expire-access-tokens``: the access tokens expire, so the next refresh uses the refresh grant;
- ``POST /casa-test/tamper`` with a :func:`tamper` spec: the id_tokens of the following logins are altered
  (claims changed and re-signed with the real key, the header changed, bytes flipped, ...); ``{}`` stops it.

Run: ``python -m tests.hub.rotating_oidc PORT USERS.json`` (see ``tests.hub.oidc.start_provider(module=...)``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from casa_demo.oidc_provider import make_app, serialized


class SigningKeys:
    def __init__(self):
        self.published: list[tuple[str, rsa.RSAPrivateKey]] = []
        self.rotate()

    def rotate(self) -> None:
        self.kid, self.key = f"casa-test-{len(self.published) + 1}", rsa.generate_private_key(65537, 2048)
        self.published.append((self.kid, self.key))

    def go_rogue(self) -> None:
        self.kid, self.key = "never-published", rsa.generate_private_key(65537, 2048)

    def private_jwk(self) -> dict:
        return {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key)), "kid": self.kid}

    def jwks(self) -> dict:
        return {
            "keys": [
                {
                    **json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())),
                    "kid": kid,
                    "use": "sig",
                    "alg": "RS256",
                }
                for kid, key in self.published
            ]
        }


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def tamper(id_token: str, spec: dict, key: rsa.RSAPrivateKey, kid: str) -> str:
    """``id_token`` altered as ``spec`` says, one of:
    ``{"claims": {name: value or None to drop}}`` (re-signed with the real key: only the claims are wrong),
    ``{"header": {...}}`` (re-signed), ``{"alg": "none"}``, ``{"alg": "HS256-public-key"}`` (HMAC keyed with the
    provider's public key), ``{"flip": [segment, index]}`` (one character changed, not re-signed),
    ``{"segments": n}`` (cut to n segments, or padded with empty ones)."""
    header = jwt.get_unverified_header(id_token)
    claims = jwt.decode(id_token, options={"verify_signature": False})
    if "claims" in spec:
        for name, value in spec["claims"].items():
            claims.pop(name, None) if value is None else claims.__setitem__(name, value)
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})
    if "header" in spec:
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid, **spec["header"]})
    signed_header = header | {"alg": spec.get("alg", header["alg"])}
    body = f"{_b64(json.dumps(signed_header).encode())}.{_b64(json.dumps(claims).encode())}"
    if spec.get("alg") == "none":
        return body + "."
    if spec.get("alg") == "HS256-public-key":
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"{body}.{_b64(hmac.new(public, body.encode(), hashlib.sha256).digest())}"
    parts = id_token.split(".")
    if "flip" in spec:
        segment, index = spec["flip"]
        text = parts[segment]
        index %= len(text)
        parts[segment] = text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]
        return ".".join(parts)
    n = spec["segments"]
    return ".".join((parts + [""] * n)[:n])


def make_rotating_app(users):
    import flask
    import oidc_provider_mock._app as mock
    from oidc_provider_mock._storage import storage

    keys = SigningKeys()
    tampering: dict = {}
    # authlib signs code-flow id_tokens with these (the demo would use its one kid-less key)
    mock.OpenIDCode.resolve_client_private_key = lambda self, client: keys.private_jwk()
    mock.OpenIDCode.get_encode_header = lambda self, client: {"alg": "RS256", "kid": keys.kid}
    app = make_app(users)

    @app.after_request
    def sign_with_current_key(response):
        request = flask.request
        if request.path == "/jwks":
            response.set_data(json.dumps(keys.jwks()))
        elif (
            request.path == "/oauth2/token"
            and request.form.get("grant_type") == "refresh_token"
            and response.status_code == 200
        ):
            body = json.loads(response.get_data())
            user = storage.get_user(storage.get_access_token(body["access_token"]).user_id)
            client_id = request.form.get("client_id") or getattr(request.authorization, "username", None)
            now = int(time.time())
            claims = {
                **user.claims,
                "iss": request.host_url.rstrip("/"),
                "sub": user.sub,
                "aud": client_id,
                "iat": now,
                "exp": now + 3600,
            }
            body["id_token"] = jwt.encode(claims, keys.key, algorithm="RS256", headers={"kid": keys.kid})
            response.set_data(json.dumps(body))
        elif (
            request.path == "/oauth2/token"
            and request.form.get("grant_type") == "authorization_code"
            and response.status_code == 200
            and tampering
        ):
            body = json.loads(response.get_data())
            body["id_token"] = tamper(body["id_token"], tampering, keys.key, keys.kid)
            response.set_data(json.dumps(body))
        return response

    @app.post("/casa-test/tamper")
    def set_tampering():
        tampering.clear()
        tampering.update(flask.request.get_json(force=True))
        return {"tampering": tampering}

    @app.post("/casa-test/rotate-key")
    def rotate_key():
        keys.rotate()
        return {"kid": keys.kid}

    @app.post("/casa-test/rogue-key")
    def rogue_key():
        keys.go_rogue()
        return {"kid": keys.kid}

    @app.post("/casa-test/expire-access-tokens")
    def expire_access_tokens():
        for token in list(storage.access_tokens()):
            storage.remove_access_token(token.token)
        return {"expired": True}

    return app


def main(argv: list[str]) -> int:
    from werkzeug.serving import make_server

    port, users = int(argv[0]), json.loads(open(argv[1]).read())
    make_server("127.0.0.1", port, serialized(make_rotating_app(users)), threaded=True).serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""A local OIDC provider with demo users, for the one-command facility and the tests.

Wraps oidc-provider-mock 0.3.4 (the release Python 3.11 gets) and closes its gaps that matter to us:
PKCE (S256) is enforced on every code flow and advertised, and the token endpoint accepts ``client_secret_post``
on the refresh grant as oauthenticator sends it. Run: ``python -m casa_demo.oidc_provider PORT USERS.json``.
"""

from __future__ import annotations

import json
import logging
import os
import sys

# the kind of users a facility has: physicists in experiment groups, GPU users, an admin
DEMO_USERS = [
    {
        "sub": "alice",
        "preferred_username": "alice",
        "email": "alice@casa.test",
        "email_verified": True,
        "name": "Alice Physicist",
        "groups": ["cms", "gpu-users"],
    },
    {
        "sub": "bob",
        "preferred_username": "bob",
        "email": "bob@casa.test",
        "email_verified": True,
        "name": "Bob Analyst",
        "groups": ["atlas"],
    },
    {
        "sub": "admin",
        "preferred_username": "admin",
        "email": "admin@casa.test",
        "email_verified": True,
        "name": "Facility Admin",
        "groups": ["cms", "facility-admins", "gpu-users"],
    },
    {
        "sub": "eve",
        "preferred_username": "eve",
        "email": "eve@casa.test",
        "email_verified": True,
        "name": "Eve Outsider",
        "groups": ["visitors"],
    },
]


def make_app(users: list[dict]):
    """The provider's Flask app with PKCE enforced; call once per process (the mock keeps global state)."""
    os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on 127.0.0.1 only
    import flask
    import oidc_provider_mock
    import oidc_provider_mock._app as mock
    from authlib.oauth2.rfc6749.errors import InvalidRequestError
    from authlib.oauth2.rfc7636 import CodeChallenge

    challenges: dict[str, tuple[str | None, str | None]] = {}

    class PKCE(CodeChallenge):
        """S256 PKCE on every code flow, confidential clients included (authlib alone requires it of public
        clients only)."""

        SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

        def validate_code_challenge(self, grant, redirect_uri):
            data = grant.request.payload.data
            if not data.get("code_challenge") or data.get("code_challenge_method") != "S256":
                raise InvalidRequestError("PKCE is required: send code_challenge with code_challenge_method=S256")
            return super().validate_code_challenge(grant, redirect_uri)

        def validate_code_verifier(self, grant, result):
            if not grant.request.form.get("code_verifier"):
                raise InvalidRequestError("PKCE is required: missing 'code_verifier'")
            return super().validate_code_verifier(grant, result)

        def get_authorization_code_challenge(self, authorization_code):
            return challenges.get(authorization_code.code, (None, None))[0]

        def get_authorization_code_challenge_method(self, authorization_code):
            return challenges.get(authorization_code.code, (None, None))[1]

    class CodeGrant(mock.AuthorizationCodeGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            PKCE(required=True)(self)

        def save_authorization_code(self, code, request):
            data = request.payload.data
            challenges[code] = (data.get("code_challenge"), data.get("code_challenge_method"))
            return super().save_authorization_code(code, request)

    class RefreshGrant(mock.RefreshTokenGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    class SigningKeyLoadedOnce(mock.OpenIDCode):
        """Sign id_tokens with the provider's key object itself: the mock hands authlib the key as a JWK dict,
        which it parses and validates again for every id_token (an RSA private key check, about 87 % of the
        provider's time in a login storm, every login waiting for it behind the lock of :func:`serialized`)."""

        _loaded: dict = {}  # the mock's key (an authlib key object) -> the same key as joserfc's, imported once

        def get_jwt_config(self, grant, client=None):
            from joserfc.jwk import import_key

            key = mock.storage.jwk
            loaded = self._loaded.get(id(key))
            if loaded is None or loaded[0] is not key:
                loaded = self._loaded[id(key)] = (key, import_key(key.as_dict(is_private=True)))
            return {**super().get_jwt_config(grant, client), "key": loaded[1]}

    mock.AuthorizationCodeGrant, mock.RefreshTokenGrant = CodeGrant, RefreshGrant
    mock.OpenIDCode = SigningKeyLoadedOnce
    app = oidc_provider_mock.app(
        user_claims=[
            oidc_provider_mock.User(sub=u["sub"], claims={k: v for k, v in u.items() if k != "sub"}) for u in users
        ]
    )

    @app.after_request
    def advertise_pkce(response):
        if flask.request.path == "/.well-known/openid-configuration":
            document = response.get_json()
            document["code_challenge_methods_supported"] = ["S256"]
            response.set_data(json.dumps(document))
        return response

    return app


def serialized(app):
    """One request at a time through ``app``: oidc-provider-mock keeps its codes and tokens in plain
    containers ("deque mutated during iteration" when a lecture hall logs in at once). Connections are still
    accepted concurrently."""
    import threading

    lock = threading.Lock()

    def locked(environ, start_response):
        with lock:
            return list(app(environ, start_response))

    return locked


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m casa_demo.oidc_provider PORT [USERS.json]", file=sys.stderr)
        return 2
    port = int(argv[0])
    users = json.loads(open(argv[1]).read()) if len(argv) > 1 else DEMO_USERS
    logging.basicConfig(level=logging.WARNING)
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", port, serialized(make_app(users)), threaded=True)
    print(f"OIDC provider on http://127.0.0.1:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

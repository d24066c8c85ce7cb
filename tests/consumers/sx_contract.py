"""A ServiceX *contract* server: the real ServiceX cannot run here, so this applies ServiceX's own rules with
the same library and settings (flask-jwt-extended, HS256 with the deployment's JWT_SECRET_KEY).

Mirrors ssl-hep/ServiceX servicex_app: ``resources/users/token_refresh.py`` (a refresh token is accepted only
when its ``jti`` equals the jti of the refresh token stored for that user) and ``decorators.auth_required``
(API calls need a valid access token of an existing, non-pending user; 401 otherwise).

Casa mints access tokens only; ``/token/refresh`` stays here so that tests can show an access token is refused
there (and that nothing of Casa's ever calls it).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from flask import Flask, jsonify
from flask_jwt_extended import JWTManager, create_access_token, get_jwt, jwt_required, verify_jwt_in_request
from werkzeug.serving import make_server


@dataclass
class User:
    identity: str
    refresh_jti: str | None = None
    pending: bool = False


@dataclass
class ContractServer:
    secret: bytes
    identity_claim: str = "sub"
    users: dict[str, User] = field(default_factory=dict)
    requests: list[tuple[str, int]] = field(default_factory=list)

    def app(self) -> Flask:
        app = Flask("servicex-contract")
        app.config.update(
            JWT_SECRET_KEY=self.secret,
            JWT_ALGORITHM="HS256",
            JWT_TOKEN_LOCATION=["headers"],
            JWT_IDENTITY_CLAIM=self.identity_claim,
        )
        JWTManager(app)

        def unauthorized(message):
            return jsonify(message=message), 401

        @app.post("/token/refresh")
        @jwt_required(refresh=True)
        def refresh():
            claims = get_jwt()
            user = self.users.get(claims[self.identity_claim])
            if user is None or user.refresh_jti is None:
                return unauthorized("No user found matching this refresh token")
            if claims["jti"] != user.refresh_jti:
                return unauthorized("Invalid or outdated refresh token")
            return jsonify(access_token=create_access_token(identity=user.identity), auth_disabled=False)

        def auth_required():
            verify_jwt_in_request(locations=["headers"])
            user = self.users.get(get_jwt()[self.identity_claim])
            if user is None:
                return unauthorized("Not Authorized: No user found matching this API token.")
            if user.pending:
                return unauthorized("Not Authorized: Your account is still pending.")
            return None

        @app.get("/servicex")
        def info():
            return auth_required() or jsonify({"app-version": "contract", "code-gen-image": {}, "capabilities": []})

        @app.get("/servicex/transformation")
        def transformations():
            return auth_required() or jsonify(requests=[])

        @app.after_request
        def record(response):
            from flask import request

            self.requests.append((request.path, response.status_code))
            return response

        return app

    def __enter__(self):
        self._server = make_server("127.0.0.1", 0, self.app(), threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._thread.join(5)

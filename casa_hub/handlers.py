"""The facility issuer's public documents, served by the hub (no authentication: they hold public keys)."""

from __future__ import annotations

import json

from tornado import web


class _IssuerDocumentHandler(web.RequestHandler):
    def initialize(self, minter):
        self.minter = minter

    def _send(self, document: dict) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "public, max-age=300")  # consumers cache keys; rotation keeps old kids
        self.set_header("Access-Control-Allow-Origin", "*")
        self.finish(json.dumps(document))


class OpenIDConfigurationHandler(_IssuerDocumentHandler):
    def get(self):
        jwks_uri = self.minter.issuer_url.rstrip("/") + "/jwks.json"
        self._send(self.minter.openid_configuration(jwks_uri))


class JWKSHandler(_IssuerDocumentHandler):
    def get(self):
        self._send(self.minter.jwks())


def issuer_handlers(minter) -> list[tuple]:
    """Routes (relative to the hub prefix) for ``Authenticator.get_handlers``."""
    return [
        (r"/casa-issuer/\.well-known/openid-configuration", OpenIDConfigurationHandler, {"minter": minter}),
        (r"/casa-issuer/jwks\.json", JWKSHandler, {"minter": minter}),
    ]

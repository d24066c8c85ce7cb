"""Serve a CasaMinter's issuer documents over HTTPS from a thread, as the hub does (tests only).

The hub serves the same two documents (casa_hub.handlers); token consumers such as XRootD's SciTokens
plugin fetch them from ``<issuer_url>/.well-known/openid-configuration`` and its ``jwks_uri``.
"""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


class IssuerServer:
    def __init__(self, cert_file: Path, key_file: Path):
        # filled once the port (and so the issuer URL) is known; the handler reads it per request
        self.documents: dict[str, dict] = {}
        docs = self.documents

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                doc = docs.get(self.path)
                body = json.dumps(doc).encode() if doc is not None else b'{"error": "not found"}'
                self.send_response(200 if doc is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file, key_file)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


def issuer_documents(minter, issuer_url: str) -> dict[str, dict]:
    """Path -> document for a minter whose ``issuer_url`` is ``issuer_url``."""
    base = urlsplit(issuer_url).path.rstrip("/")
    jwks_uri = issuer_url.rstrip("/") + "/jwks.json"
    return {
        f"{base}/.well-known/openid-configuration": minter.openid_configuration(jwks_uri),
        f"{base}/jwks.json": minter.jwks(),
    }

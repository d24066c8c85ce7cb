"""Reaching the XRootD test site (xrootd_server.py) as a client, and asserting XRootD's own refusals (the answer
and the server log). Used by test_xrootd.py and test_consumer_restart.py."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.consumers import xrootd_server as xs

XRDCP_NOT_AUTHORIZED = 54  # xrdcp's exit status for a server-side error
NOT_AUTHORIZED = "[3010]"  # kXR_NotAuthorized, as xrdcp prints it


@dataclass
class Outcome:
    ok: bool
    detail: str  # HTTP status + body or xrdcp stderr, for assertion messages
    refused: bool  # XRootD's own "permission denied", not a transport error
    log_offset: int  # where the server log stood when the request started


@dataclass
class Endpoint:
    """One server (origin or cache) reached over one transport (https with a Bearer header, or roots+ztn)."""

    site: xs.Site
    server: xs.XrootdServer
    transport: str

    def read(self, token: bytes | None, dest: Path, path: str = xs.TEST_FILE) -> Outcome:
        since = self.server.log_size()
        if self.transport == "https":
            status, body = self.site.https(self.server, "GET", path, token)
            if status == 200:
                dest.write_bytes(body)
            ok, refused, detail = status == 200, status == 403 and b"permission denied" in body, f"{status} {body!r}"
        else:
            r = self.site.xrdcp(self.server.root_url + path, str(dest), token)
            ok, detail = r.returncode == 0, f"rc={r.returncode} {r.stderr.strip()}"
            refused = (
                r.returncode == XRDCP_NOT_AUTHORIZED and NOT_AUTHORIZED in r.stderr and "permission denied" in r.stderr
            )
        return Outcome(ok, detail, refused, since)


def assert_refused(endpoint: Endpoint, token: bytes | None, tmp_path: Path, *reasons: str) -> str:
    """XRootD refused the read, and its log (the request's part) matches every regex in ``reasons``."""
    dest = tmp_path / "refused"
    out = endpoint.read(token, dest)
    assert out.refused, f"expected XRootD to refuse, got {out.detail}"
    assert not dest.exists()
    log = endpoint.server.wait_for_log("|".join(f"(?:{r})" for r in reasons), out.log_offset)
    for reason in reasons:
        assert re.search(reason, log), f"refusal reason {reason!r} not in the {endpoint.server.name} log:\n{log}"
    return log

"""SpawnRefused: a spawn Casa refuses or cannot do, with a message for the user; JupyterHub 5.5 to 6.x.

JupyterHub 6 has ``jupyterhub.spawner.SpawnException`` for this (a handled refusal: no traceback, its own metrics
reason, no count towards ``consecutive_failure_limit``). JupyterHub 5.5 (the Z2JH chart's hub image) has none:
there a spawner raises a ``tornado.web.HTTPError``; its ``status_code`` is the answer's status, the hub's pages
and progress stream show its ``jupyterhub_message`` (and ``jupyterhub_html_message``), and its REST API answers
with its ``log_message``. SpawnRefused is the one on 6 and the other on 5.5:

- ``message`` and ``jupyterhub_message``: for the user;
- ``detail`` (the ``log_message`` argument, default: the message): for the hub's log, in ``str(error)``;
- ``log_message``: ``detail`` on JupyterHub 6 (as SpawnException), the user's message on 5.5 (its API shows it);
- ``status_code`` and ``reason`` (a short label).
"""

from __future__ import annotations

from tornado import web

try:
    from jupyterhub.spawner import SpawnException as _Base  # JupyterHub >= 6
except ImportError:  # JupyterHub 5.x
    _Base = web.HTTPError


class SpawnRefused(_Base):
    log_message = ""  # a plain attribute, as in SpawnException (tornado >= 6.5 has a read-only property)

    def __init__(self, message: str, *, reason: str, status_code: int = 400, log_message: str | None = None):
        web.HTTPError.__init__(self, status_code, None, reason=reason)
        self.message = self.jupyterhub_message = message
        self.message_html = ""
        self.detail = log_message or message
        self.log_message = self.detail if _Base is not web.HTTPError else message

    def get_message(self) -> str:
        return self.log_message

    def __str__(self) -> str:
        return f"{self.status_code} {type(self).__name__}(reason={self.reason}): {self.detail}"

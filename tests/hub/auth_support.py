"""In-process stand-ins for the pieces of JupyterHub that CasaAuthenticator talks to, and the login as
JupyterHub runs it (its admission checks, then the authenticator's post-auth step)."""

from __future__ import annotations

from traitlets.config import Config

from casa_hub.authenticator import CasaAuthenticator
from tests.support import write_keys

CLIENT, CLIENT_SECRET = "casa-test", "casa-test-client-secret-5d1f0a9e"


class HubUser:
    """The slice of jupyterhub.user.User the authenticator uses (name, admin, auth state, spawners)."""

    def __init__(self, name, auth_state, admin=False):
        self.name, self._state, self.admin, self.spawners = name, auth_state, admin, {}

    async def get_auth_state(self):
        return self._state

    async def save_auth_state(self, state):
        self._state = state


class LoginHandler:
    """The slice of JupyterHub's login handler the authenticator uses: the users JupyterHub already has."""

    def __init__(self, *users: HubUser):
        self.users = {u.name: u for u in users}

    def find_user(self, name):
        return self.users.get(name)


def make_authenticator(tmp_path, issuer: str, **traits) -> CasaAuthenticator:
    """CasaAuthenticator for ``issuer`` with fresh keys, admitting the ``cms`` group unless told otherwise."""
    keys = write_keys(tmp_path / "keys")
    c = Config()
    c.CasaAuthenticator.oidc_issuer = issuer
    c.CasaAuthenticator.client_id = CLIENT
    c.CasaAuthenticator.client_secret = CLIENT_SECRET
    c.CasaAuthenticator.allowed_groups = {"cms"}
    c.CasaAuthenticator.credential_refresh_margin = 1800
    c.CasaMinter.issuer_url = "https://hub.test/hub/casa-issuer"
    c.CasaMinter.issuer_key_file = str(keys["issuer"])
    c.DaskTLS.ca_secret_file = str(keys["dask-ca"])
    for name, value in traits.items():
        cls, _, trait = name.rpartition("__")
        setattr(getattr(c, cls or "CasaAuthenticator"), trait, value)
    return CasaAuthenticator(config=c)


async def admitted(auth: CasaAuthenticator, token_info: dict, handler=None) -> dict | None:
    """What JupyterHub's login does with a token response: ``get_authenticated_user`` (name, blocked and
    allowed checks, then ``run_post_auth_hook``), the code exchange already done. None: refused."""

    async def authenticate(handler, data):
        return await auth._token_to_auth_model(token_info)

    auth.authenticate = authenticate
    return await auth.get_authenticated_user(handler, None)

"""CasaLocalSpawner: the Casa credential pipeline for single-user servers on the hub's own machine.

The bundle is written into a private directory (0700) of the user, file by file and atomically
(:mod:`casa_hub.credentials.bundle_dir`). The directory goes away when the server stops.
"""

from __future__ import annotations

import asyncio
import os
import pwd
from html import escape
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Bool, List, Unicode, default

from .credentials.bundle import CredentialBundle
from .credentials.bundle_dir import remove_bundle_dir, write_bundle_dir
from .errors import SpawnRefused
from .mixin import CasaCredentialsMixin
from .profiles import ProfileRefused, check_profile_choice, visible_profiles


class CasaLocalSpawner(CasaCredentialsMixin, LocalProcessSpawner):
    """Local single-user servers with the user's credentials in a private directory (0700).

    With ``run_as_hub_user = True`` (the one-command local facility) servers run as the hub's own Unix user,
    each in its own home directory; otherwise as the matching system user, like LocalProcessSpawner.
    """

    credentials_dir_template = Unicode(
        "{home}/.casa/credentials",
        help="""Where the bundle is written; ``{home}`` and ``{username}`` are expanded. The directory is
        private (0700), owned by the user, and removed when the server stops. Default
        ``{home}/.casa/credentials``; e.g. ``c.CasaLocalSpawner.credentials_dir_template =
        "/run/casa/{username}"``.""",
    ).tag(config=True)

    run_as_hub_user = Bool(
        False,
        help="""Run servers as the hub's Unix user in ``home_dir_template`` instead of switching to a system
        user of the same name (a single-machine demo facility; no isolation between users). Default False.""",
    ).tag(config=True)

    home_dir_template = Unicode(
        "/tmp/casa-home/{username}",
        help="""Home directory of each user when ``run_as_hub_user`` is set; ``{username}`` is expanded.
        Default ``/tmp/casa-home/{username}``.""",
    ).tag(config=True)

    profiles = List(
        help="""Profiles offered on the spawn form, e.g. ``{"display_name": "GPU", "slug": "gpu",
        "description": "...", "casa_allowed_groups": ["gpu-users"], "environment": {"CASA_GPU_COUNT": "1"}}``.
        ``environment`` is added to the server's env; ``casa_allowed_groups`` restricts a profile to those
        groups (like CasaSpawner's profiles). Empty (default): no form.""",
    ).tag(config=True)

    @default("options_form")
    def _profiles_form_default(self):
        return self._render_profiles_form if self.profiles else ""

    def _render_profiles_form(self, spawner) -> str:
        rows = []
        for i, p in enumerate(visible_profiles(self.profiles, self.casa_groups)):
            checked = " checked" if i == 0 else ""
            rows.append(
                f'<label class="casa-profile"><input type="radio" name="profile" value="{escape(p["slug"])}"'
                f"{checked}> <strong>{escape(p['display_name'])}</strong> "
                f"{escape(p.get('description', ''))}</label><br>"
            )
        return "\n".join(rows)

    def options_from_form(self, formdata):
        return {"profile": (formdata.get("profile") or [""])[0]}

    def _apply_profile(self) -> None:
        slug = self.user_options.get("profile")
        if not self.profiles or not slug:
            return
        visible = visible_profiles(self.profiles, self.casa_groups)
        try:
            check_profile_choice(self.profiles, visible, slug)
        except ProfileRefused as e:
            raise SpawnRefused(str(e), reason="casa-profile", status_code=403) from None
        profile = next(p for p in visible if p["slug"] == slug)
        self.environment = {**self.environment, **profile.get("environment", {})}

    def _home(self) -> str:
        if self.run_as_hub_user:
            return self.home_dir_template.format(username=self.user.name)
        return pwd.getpwnam(self.user.name).pw_dir

    def _owner(self) -> tuple[int | None, int | None]:
        if self.run_as_hub_user:
            return None, None
        entry = pwd.getpwnam(self.user.name)
        return entry.pw_uid, entry.pw_gid

    @property
    def credentials_dir(self) -> Path:
        return Path(self.credentials_dir_template.format(home=self._home(), username=self.user.name))

    def make_preexec_fn(self, name):
        if not self.run_as_hub_user:
            return super().make_preexec_fn(name)
        home = self._home()

        def preexec():
            os.makedirs(home, 0o700, exist_ok=True)
            os.chdir(home)

        return preexec

    def user_env(self, env):
        if not self.run_as_hub_user:
            return super().user_env(env)
        env["USER"] = self.user.name
        env["HOME"] = self._home()
        return env

    def get_env(self):
        env = super().get_env()
        if self.casa_bundle is not None:
            env.update(self.casa_bundle.env_for(str(self.credentials_dir)))
        return env

    async def casa_write_bundle(self, bundle: CredentialBundle) -> None:
        uid, gid = self._owner()
        await asyncio.to_thread(write_bundle_dir, self.credentials_dir, bundle, uid, gid)

    async def casa_remove_bundle(self) -> None:
        await asyncio.to_thread(remove_bundle_dir, self.credentials_dir)

    async def start(self):
        if self.casa_bundle is None:
            message = "No credentials for this server: please log out and log in again."
            raise SpawnRefused(message, reason="casa-credentials", status_code=403)
        self._apply_profile()
        self.casa_progress("Minting credentials", 10)
        await self.casa_write_bundle(self.casa_bundle)
        self.casa_progress("Credentials written to a private directory", 30)
        try:
            result = await super().start()
        except BaseException:
            await self.casa_remove_bundle()
            raise
        return result

    async def progress(self):
        async for event in self.casa_progress_events():
            yield event
        yield {"progress": 50, "message": "Starting the server..."}

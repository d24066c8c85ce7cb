"""Generate docs/config-reference.md from the traitlets help strings of Casa Hub's configurable classes.

Run: ``.venv/bin/python docs/gen_config_reference.py`` (tests/unit/test_docs.py checks the file is current).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

# (module, class) pairs, in the order an admin meets them
CLASSES = [
    ("casa_hub.authenticator", "CasaAuthenticator"),
    ("casa_hub.minter", "CasaMinter"),
    ("casa_hub.refresher", "CasaRefresher"),
    # the built-in credential kinds (CasaMinter.kinds), each configured in its own section
    ("casa_hub.credentials.kinds.xcache_token", "XCacheToken"),
    ("casa_hub.credentials.kinds.xcache_macaroon", "XCacheMacaroon"),
    ("casa_hub.credentials.kinds.htcondor", "HTCondorToken"),
    ("casa_hub.credentials.kinds.servicex", "ServiceXToken"),
    ("casa_hub.credentials.kinds.dask_tls", "DaskTLS"),
    ("casa_hub.credentials.kinds.mlflow", "MLflowToken"),
    ("casa_hub.spawner", "CasaSpawner"),
    ("casa_hub.local", "CasaLocalSpawner"),
    ("casa_hub.revoke", "CasaRevocations"),
    ("casa_hub_ext.options", "CasaClusterSettings"),
    ("casa_hub_ext.worker_credentials", "WorkerCredentials"),
    ("casa_hub_ext.client_bundle", "ClientBundleSettings"),
]
OUTPUT = Path(__file__).with_name("config-reference.md")


def _own_traits(cls) -> dict:
    """Configurable traits defined by Casa classes (not those inherited from JupyterHub/KubeSpawner)."""
    traits = cls.class_traits(config=True)
    own = {}
    for name, trait in traits.items():
        for klass in cls.__mro__:
            if name in vars(klass):
                if klass.__module__.split(".")[0] in ("casa_hub", "casa_hub_ext"):
                    own[name] = trait
                break
    return dict(sorted(own.items()))


def _default(cls, name, trait) -> str:
    if any(
        name in getattr(k, "_trait_default_generators", {})
        for k in cls.__mro__
        if k.__module__.split(".")[0] in ("casa_hub", "casa_hub_ext")
    ):
        return "computed at start-up (see help)"
    try:
        value = trait.default_value_repr()
    except Exception:  # dynamic defaults (@default) have no static repr
        value = "dynamic"
    return value if len(value) < 80 else value[:77] + "..."


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated from the traitlets help strings by `docs/gen_config_reference.py`; do not edit by hand.",
        "Set any of these in `jupyterhub_config.py` as `c.<Class>.<trait> = ...`, or in a Z2JH `values.yaml`",
        "under `hub.config.<Class>.<trait>`.",
        "",
    ]
    for module, name in CLASSES:
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        out += [f"## {name}", "", inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0], ""]
        for trait_name, trait in _own_traits(cls).items():
            help_text = inspect.cleandoc(trait.help or "(no help)")
            out += [
                f"### `{name}.{trait_name}`",
                "",
                f"*{type(trait).__name__}*, default `{_default(cls, trait_name, trait)}`",
                "",
                help_text,
                "",
            ]
    return "\n".join(out).rstrip() + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if argv and argv[0] == "--check":
        return 0 if OUTPUT.exists() and OUTPUT.read_text() == text else 1
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

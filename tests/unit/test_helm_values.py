"""helm-values/*.yaml are valid Z2JH values and their hub.config loads into Casa's classes cleanly."""

from __future__ import annotations

import logging
from pathlib import Path

import jsonschema
import pytest
import yaml
from traitlets.config import Config

from tests import helm
from tests.helm import merge as _merge  # Helm's merge of a values file over the chart defaults

REPO = Path(__file__).resolve().parents[2]
VALUES_FILES = sorted((REPO / "helm-values").glob("*values*.yaml"))


@pytest.fixture(scope="module")
def schema():
    return helm.chart_schema()


@pytest.fixture(scope="module")
def chart_defaults():
    return helm.chart_defaults()


def test_there_are_values_files():
    assert VALUES_FILES, "helm-values/ has no values files"


@pytest.mark.parametrize("path", VALUES_FILES, ids=lambda p: p.name)
def test_values_validate_against_z2jh_schema(path, schema, chart_defaults):
    merged = _merge(chart_defaults, yaml.safe_load(path.read_text()))
    jsonschema.validate(merged, schema)


def test_schema_rejects_a_typo(schema, chart_defaults):
    """The validation above can fail: an unknown top-level hub key is refused by Z2JH's schema."""
    merged = _merge(chart_defaults, {"hub": {"confg": {}}})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(merged, schema)


def _hub_config(path: Path) -> Config:
    # Z2JH's jupyterhub_config.py loads hub.config.<Class>.<trait> straight into traitlets config
    values = yaml.safe_load(path.read_text())
    return Config(values["hub"]["config"])


def _warnings_for(cls, config: Config, caplog) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        cls(config=config, log=logging.getLogger("casa-test"))
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("path", VALUES_FILES, ids=lambda p: p.name)
def test_hub_config_instantiates_casa_classes_without_unknown_traits(path, caplog):
    import importlib
    import sys

    from casa_hub.authenticator import CasaAuthenticator
    from casa_hub.credentials.kind import installed_kinds, kind_class
    from casa_hub.minter import CasaMinter
    from casa_hub.spawner import CasaSpawner

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "docs"))
    import gen_config_reference  # the configurable classes of the configuration reference

    config = _hub_config(path)
    kinds = [kind_class(name) for name in installed_kinds()]
    documented = [getattr(importlib.import_module(m), c) for m, c in gen_config_reference.CLASSES]
    classes = {cls.__name__: cls for cls in (CasaAuthenticator, CasaMinter, CasaSpawner, *kinds, *documented)}
    for name, section in config.items():
        if name in ("JupyterHub", "Authenticator"):
            continue
        assert name in classes, f"{path.name}: hub.config.{name} configures no Casa class (typo?)"
        unknown = sorted(set(section) - set(classes[name].class_trait_names(config=True)))
        assert not unknown, f"{path.name}: hub.config.{name} has unknown traits {unknown}"
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        enabled = CasaMinter(config=config, log=logging.getLogger("casa-test")).enabled_kinds
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [w for w in warnings if "not recognized" in w or "unrecognized" in w.lower()], warnings
    assert [k.name for k in enabled] == list(config.CasaMinter.kinds)


@pytest.mark.parametrize("path", VALUES_FILES, ids=lambda p: p.name)
def test_user_extension_settings_load_and_the_login_cluster_validates(path):
    """singleuser.extraFiles mounts the user extension's own config file (admin guide §3): every key is a
    CasaClusterSettings trait, the values pass its validation, and the login cluster's options are within the
    facility's bounds (a server without GPUs, the CPU profile)."""
    from casa_hub_ext.gpu import Inventory
    from casa_hub_ext.options import CasaClusterSettings, OptionsSpec

    files = yaml.safe_load(path.read_text()).get("singleuser", {}).get("extraFiles", {})
    settings_files = [f for f in files.values() if f["mountPath"].endswith("/jupyter_casa_hub_ext_config.json")]
    for f in settings_files:
        assert f["mountPath"] == "/etc/jupyter/jupyter_casa_hub_ext_config.json"  # on Jupyter's config path
        section = f["data"]["CasaClusterSettings"]
        unknown = sorted(set(section) - set(CasaClusterSettings.class_trait_names(config=True)))
        assert not unknown, f"{path.name}: CasaClusterSettings has unknown traits {unknown}"
        settings = CasaClusterSettings(config=Config(f["data"]), backends=["local"])
        if settings.login_cluster is not None:
            OptionsSpec(settings, Inventory((), "none")).validate(settings.login_cluster)
    if path.name == "values.yaml":  # the facility's values turn the scheduler at login on (issue 15)
        assert [f["data"]["CasaClusterSettings"]["login_cluster"] for f in settings_files]


def test_unknown_trait_is_detected(tmp_path):
    """The unknown-trait check above can fail."""
    from casa_hub.credentials.kinds.xcache_token import XCacheToken
    from casa_hub.minter import CasaMinter

    assert "issuer_key_fil" not in CasaMinter.class_trait_names(config=True)
    assert "lifetme" not in XCacheToken.class_trait_names(config=True)


@pytest.mark.parametrize("path", VALUES_FILES, ids=lambda p: p.name)
def test_entry_points_resolve(path):
    from importlib.metadata import entry_points

    config = _hub_config(path)["JupyterHub"]
    auth = {e.name: e for e in entry_points(group="jupyterhub.authenticators")}
    spawners = {e.name: e for e in entry_points(group="jupyterhub.spawners")}
    assert auth[config["authenticator_class"]].load().__name__ == "CasaAuthenticator"
    assert spawners[config["spawner_class"]].load().__name__ == "CasaSpawner"


@pytest.mark.parametrize("path", VALUES_FILES, ids=lambda p: p.name)
def test_no_secret_in_clear(path):
    text = path.read_text()
    for marker in ("BEGIN PRIVATE KEY", "BEGIN EC PRIVATE KEY", "BEGIN RSA PRIVATE KEY"):
        assert marker not in text
    values = yaml.safe_load(text)
    secret = values["hub"]["config"].get("CasaAuthenticator", {}).get("client_secret", "")
    assert not secret, "client_secret must come from a Kubernetes Secret, not values.yaml"

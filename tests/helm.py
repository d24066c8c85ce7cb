"""Helm's side of a Z2JH install, for tests: values files merged over the chart's defaults as Helm merges
them, and checked against the chart's own schema (tests/data/z2jh: values.yaml, values.schema.yaml)."""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
Z2JH = REPO / "tests" / "data" / "z2jh"
CASA_VALUES = REPO / "helm-values" / "values.yaml"


def merge(base: dict, override: dict) -> dict:
    """Helm's coalescing of a values file over the chart defaults: maps merge key by key, lists and scalars
    replace, and a ``null`` in the override removes the chart's default for that key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None and key in out:
            del out[key]
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@lru_cache
def _chart_defaults_text() -> str:
    return (Z2JH / "values.yaml").read_text()


def chart_defaults() -> dict:
    """The chart's default values (a fresh copy each call)."""
    return yaml.safe_load(_chart_defaults_text())


@lru_cache
def chart_schema() -> dict:
    return yaml.safe_load((Z2JH / "values.schema.yaml").read_text())


def values(*overrides: dict | str | Path) -> dict:
    """``helm install -f A -f B ...``: the chart defaults with each values file (a dict, YAML text or a
    path) merged over them in order."""
    out = chart_defaults()
    for o in overrides:
        if isinstance(o, Path):
            o = o.read_text()
        if isinstance(o, str):
            o = yaml.safe_load(o) or {}
        out = merge(out, o)
    return out


@lru_cache
def _validator():
    import jsonschema

    return jsonschema.Draft7Validator(chart_schema())


def schema_errors(merged: dict) -> list[str]:
    """What ``helm install`` would refuse (the chart's values.schema), one line per error:
    ``hub.confg: Additional properties are not allowed ('confg' was unexpected)``."""
    validator = _validator()
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(top level)'}: {e.message}"
        for e in sorted(validator.iter_errors(merged), key=lambda e: list(map(str, e.absolute_path)))
    ]

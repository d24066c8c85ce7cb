"""Kubernetes RBAC as the API server applies it, for the emulator (tests/hub/kube.py): the rules of the Z2JH
chart's hub Role (tests/data/z2jh/hub/rbac.yaml, the chart's own template) and of Casa's optional extras
(helm-values/extra-rbac.yaml), the verb a request needs, and the 403 Status object a refusal gets.

Pure: requests in, decisions out."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_RBAC = REPO / "tests" / "data" / "z2jh" / "hub" / "rbac.yaml"
EXTRA_RBAC = REPO / "helm-values" / "extra-rbac.yaml"
SERVICE_ACCOUNT = "system:serviceaccount:default:hub"


@dataclass(frozen=True)
class Rule:
    api_groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    cluster_wide: bool  # a ClusterRole's rule (also grants in every namespace); a Role's applies in its own

    def allows(self, verb: str, group: str, resource: str, namespace: str | None) -> bool:
        if namespace is None and not self.cluster_wide:
            return False
        return (
            (verb in self.verbs or "*" in self.verbs)
            and (group in self.api_groups or "*" in self.api_groups)
            and (resource in self.resources or "*" in self.resources)
        )


def _rules(text: str) -> list[Rule]:
    # Helm template lines ({{ ... }}) carry no rules: drop them, keep the YAML documents
    plain = "\n".join(line for line in text.splitlines() if "{{" not in line)
    rules = []
    for doc in yaml.safe_load_all(plain):
        if not doc or doc.get("kind") not in ("Role", "ClusterRole"):
            continue
        for r in doc.get("rules") or []:
            rules.append(
                Rule(
                    frozenset(r.get("apiGroups", [])),
                    frozenset(r.get("resources", [])),
                    frozenset(r.get("verbs", [])),
                    doc["kind"] == "ClusterRole",
                )
            )
    return rules


def chart_rules() -> list[Rule]:
    """The Z2JH chart's hub Role."""
    return _rules(CHART_RBAC.read_text())


def extra_rules() -> list[Rule]:
    """Casa's documented optional rights (helm-values/extra-rbac.yaml)."""
    return _rules(EXTRA_RBAC.read_text())


def rules_for(mode: str) -> list[Rule] | None:
    """``chart`` (the default), ``chart+extras``, or ``off`` (no enforcement: None)."""
    if mode == "off":
        return None
    if mode == "chart":
        return chart_rules()
    if mode == "chart+extras":
        return chart_rules() + extra_rules()
    raise ValueError(f"unknown RBAC mode {mode!r}: chart, chart+extras or off")


def verb_of(method: str, name: str | None, subresource: str | None, params) -> str:
    method = method.upper()
    if method == "GET":
        if str(params.get("watch", "")).lower() in ("true", "1"):
            return "watch"
        return "get" if name else "list"
    if method == "DELETE":
        return "delete" if name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


def forbidden(verb: str, group: str, resource: str, namespace: str | None, name: str | None) -> dict:
    """The Status object a real API server answers a refused request with."""
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    qualified = f"{resource}.{group}" if group else resource
    what = f'{qualified} "{name}"' if name else qualified
    message = (
        f'{what} is forbidden: User "{SERVICE_ACCOUNT}" cannot {verb} resource "{resource}" in API group '
        f'"{group}"{where}'
    )
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "Forbidden",
        "details": {"name": name or "", "kind": resource},
        "code": 403,
    }


_BEARER = re.compile(r"^Bearer\s+(\S+)$", re.I)


def bearer(headers) -> str | None:
    match = _BEARER.match(headers.get("Authorization", "") or "")
    return match.group(1) if match else None

"""User names and server names of any Unicode, length and punctuation -> valid, collision-free Kubernetes
names and labels; group names never reach Kubernetes objects; Dask certificate SANs stay DNS-safe.

The spawner is a real CasaSpawner (KubeSpawner 7.1.0) built in-process as JupyterHub builds it (a user, an ORM
spawner row carrying the server name, the Hub); it points at an unreachable API server and never calls it: the
objects checked are the ones its own code builds (``get_pod_manifest``, the Secret/Service/route builders fed
with the spawner's names and labels, exactly as ``_casa_put_secret`` / ``_casa_create_dask_objects`` do;
outside a start ``get_pod_manifest`` only builds).
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote

import pytest
from cryptography import x509
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from kubernetes_asyncio.client import ApiClient
from traitlets.config import Config

from casa_hub import objects
from casa_hub.authenticator import CasaAuthenticator
from casa_hub.credentials import dask_tls
from casa_hub.spawner import CasaSpawner
from tests.fuzz.spawners import Spawners
from tests.support import make_minter, write_keys

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# Kubernetes' own validation rules (k8s.io/apimachinery/pkg/util/validation), written out independently of
# KubeSpawner's slug module so that the test does not grade KubeSpawner with its own yardstick
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def is_subdomain(s: str) -> bool:
    return len(s) <= 253 and DNS1123_SUBDOMAIN.fullmatch(s) is not None


def is_dns1123_label(s: str) -> bool:
    return len(s) <= 63 and DNS1123_LABEL.fullmatch(s) is not None


def is_dns1035_label(s: str) -> bool:
    return len(s) <= 63 and DNS1035_LABEL.fullmatch(s) is not None


def is_dns_name(s: str) -> bool:
    """A host name: a DNS-1123 subdomain whose every label is at most 63 characters."""
    return is_subdomain(s) and all(len(label) <= 63 for label in s.split("."))


def is_label_value(s: str) -> bool:
    return len(s) <= 63 and LABEL_VALUE.fullmatch(s) is not None


def is_label_key(k: str) -> bool:
    prefix, _, name = k.rpartition("/")
    return (not prefix or is_subdomain(prefix)) and len(name) <= 63 and LABEL_NAME.fullmatch(name) is not None


# ------------------------------------------------------------------ fixtures: authenticator (spawners: conftest.py)
@pytest.fixture(scope="module")
def authenticator(tmp_path_factory):
    keys = write_keys(tmp_path_factory.mktemp("names-keys"))
    c = Config()
    c.CasaAuthenticator.oidc_issuer = "http://127.0.0.1:1"
    c.CasaAuthenticator.client_id = "casa-test"
    c.CasaAuthenticator.client_secret = "x"
    c.CasaMinter.issuer_url = "https://hub.test/hub/casa-issuer"
    c.CasaMinter.issuer_key_file = str(keys["issuer"])
    c.DaskTLS.ca_secret_file = str(keys["dask-ca"])
    return CasaAuthenticator(config=c)


_SERIALIZER = object.__new__(ApiClient)  # kubernetes_asyncio's JSON serializer needs no connection


def api_json(obj):
    return _SERIALIZER.sanitize_for_serialization(obj)


def k8s_objects(spawners: Spawners, spawner: CasaSpawner) -> dict[str, dict]:
    """Pod, Secret, Service and route as the spawner would send them (API JSON)."""
    labels = spawner.casa_labels()
    host = spawner.format_string(spawner.casa_dask_route_host_template)
    return {
        "pod": api_json(spawners.pod(spawner)),
        "secret": api_json(
            objects.make_credentials_secret(spawner.casa_secret_name, spawner.namespace, spawner.casa_bundle, labels)
        ),
        "service": api_json(
            objects.make_dask_scheduler_service(
                spawner.casa_service_name,
                spawner.namespace,
                spawner.casa_server_selector(),
                spawner.casa_dask_scheduler_port,
                [],
                labels,
            )
        ),
        "route": objects.make_dask_route(
            spawner.casa_service_name,
            spawner.namespace,
            host,
            spawner.casa_service_name,
            spawner.casa_dask_scheduler_port,
            [],
            labels,
            spawner.casa_dask_route_entry_point,
        ),
        "host": {"metadata": {"name": host}},
    }


# ------------------------------------------------------------------ strategies
# anything an identity provider might send as preferred_username: any Unicode (letters, marks, symbols,
# punctuation, other scripts), ASCII punctuation, very long names, and names that look like slugs already
_unicode_names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=80)
_punctuated = st.text(st.sampled_from("abcXYZ019.-_@+~!$%&*'()=,;:#?[]{}|^`\"\\ "), min_size=1, max_size=70)
_long = st.builds(lambda c, n: c * n, st.sampled_from(["a", "Z", "é", "-", ".", "ab-", "名"]), st.integers(40, 255))
_sluglike = st.from_regex(r"[a-z][a-z0-9-]{0,70}[a-z0-9]", fullmatch=True)
raw_usernames = st.one_of(_unicode_names, _punctuated, _long, _sluglike)

# server names: JupyterHub 6 creates only safe slugs (1-30 of [a-z0-9-]), but servers made by older hubs keep
# whatever name they had, so any text is checked as well
server_names = st.one_of(
    st.just(""),
    st.from_regex(r"[a-z]([a-z0-9]|-(?!-)){0,28}[a-z0-9]", fullmatch=True),
    st.text(st.characters(codec="utf-8", exclude_characters="/"), max_size=60),
)


def accepted(authenticator, raw: str) -> str | None:
    """The user name JupyterHub would create for a claimed ``raw`` name, or None if the login is refused."""
    name = authenticator.normalize_username(raw)
    return name if authenticator.validate_username(name) else None


# ------------------------------------------------------------------ the refusals the rest relies on
@FUZZ
@given(raw=raw_usernames)
def test_accepted_user_names_are_stable_and_refusals_are_the_documented_ones(authenticator, raw):
    """normalize/validate never crash; an accepted name is its own normal form (normalising twice changes
    nothing), and exactly the documented names are refused (Casa: empty, > 255, '/', control/separator
    characters, not NFKC-stable; JupyterHub: names that are only dots, also once URL-unquoted)."""
    name = authenticator.normalize_username(raw)
    ok = authenticator.validate_username(name)
    expected_refusal = (
        not name
        or len(name) > 255
        or "/" in name
        or any(unicodedata.category(c)[0] in "CZ" for c in name)
        or unicodedata.normalize("NFKC", name) != name
        or set(name) == {"."}
        or set(unquote(name)) == {"."}
    )
    assert ok is (not expected_refusal)
    if ok:
        assert authenticator.normalize_username(name) == name


# ------------------------------------------------------------------ validity
@FUZZ
@given(raw=raw_usernames, server=server_names)
@example(raw="alice", server="")
@example(raw="Ä" * 255, server="")
@example(raw="a" * 255, server="b" * 30)
@example(raw="x--y", server="gpu--2")
@example(raw="名前.テスト", server="")
def test_every_name_and_label_is_valid_for_kubernetes(authenticator, spawners, raw, server):
    """For any accepted user name and any server name: Secret, pod and route names are DNS-1123 subdomains,
    the Service a DNS-1035 label, the route host a DNS name, and every label key and value valid."""
    username = accepted(authenticator, raw)
    assume(username is not None)
    spawner = spawners.make(username, server)
    built = k8s_objects(spawners, spawner)
    for kind in ("pod", "secret", "route"):
        name = built[kind]["metadata"]["name"]
        assert is_subdomain(name), (kind, name)
        assert is_dns1123_label(name), (kind, name)  # pods are also hostnames: KubeSpawner keeps them labels
    assert is_dns1035_label(built["service"]["metadata"]["name"]), built["service"]["metadata"]["name"]
    assert is_dns_name(built["host"]["metadata"]["name"]), built["host"]["metadata"]["name"]
    # the Secret the pod mounts is the Secret written, and the route points at the Service
    (volume,) = [v for v in built["pod"]["spec"]["volumes"] if v["name"] == "casa-credentials"]
    assert volume["secret"]["secretName"] == built["secret"]["metadata"]["name"]
    assert built["route"]["spec"]["routes"][0]["services"][0]["name"] == built["service"]["metadata"]["name"]
    for kind in ("pod", "secret", "service", "route"):
        for key, value in built[kind]["metadata"]["labels"].items():
            assert is_label_key(key) and is_label_value(value), (kind, key, value)
    for key, value in built["service"]["spec"]["selector"].items():
        assert is_label_key(key) and is_label_value(value), ("selector", key, value)
    # the selector selects this very pod
    assert built["service"]["spec"]["selector"].items() <= built["pod"]["metadata"]["labels"].items()


# ------------------------------------------------------------------ collisions
def _names(spawner: CasaSpawner) -> dict[str, str]:
    return {
        "pod": spawner.pod_name,
        "secret": spawner.casa_secret_name,
        "service": spawner.casa_service_name,
        "host": spawner.format_string(spawner.casa_dask_route_host_template),
    }


@settings(FUZZ, max_examples=80)
@given(raws=st.lists(raw_usernames, min_size=2, max_size=6), servers=st.lists(server_names, min_size=1, max_size=3))
def test_distinct_users_and_servers_never_share_a_name(authenticator, spawners, raws, servers):
    """Distinct (user, server) pairs get distinct pod, Secret, Service and route names, and distinct users
    distinct username labels: also when a user picks as their name another user's slug (the name-squatting
    move: 'a.b' is slugged to 'a-b---<hash>', so a user calls themselves 'a-b---<hash>')."""
    users = {u for u in (accepted(authenticator, r) for r in raws) if u}
    # add every user's slugs as further (hostile) user names, where the authenticator accepts them
    for u in list(users):
        slug_spawner = spawners.make(u)
        for squat in (
            slug_spawner.format_string("{username}"),
            slug_spawner.casa_labels()["hub.jupyter.org/username"],
        ):
            if accepted(authenticator, squat) == squat:
                users.add(squat)
    assume(len(users) >= 2)
    seen: dict[str, dict[str, tuple]] = {kind: {} for kind in ("pod", "secret", "service", "host", "label")}
    for user in sorted(users):
        label = spawners.make(user).casa_labels()["hub.jupyter.org/username"]
        assert seen["label"].setdefault(label, (user,)) == (user,), f"{user!r} and {seen['label'][label]} share {label}"
        for server in set(servers):
            for kind, name in _names(spawners.make(user, server)).items():
                owner = seen[kind].setdefault(name, (user, server))
                assert owner == (user, server), f"{(user, server)} and {owner} share the {kind} name {name!r}"


# ------------------------------------------------------------------ groups
group_names = st.lists(st.text(st.characters(codec="utf-8"), min_size=1, max_size=40), max_size=5)


@settings(FUZZ, max_examples=60)
@given(raw=raw_usernames, groups=group_names)
def test_group_names_never_reach_kubernetes_objects(authenticator, spawners, raw, groups):
    """Groups (any Unicode, from the provider's claim) only gate profiles and GPU caps: the objects a spawner
    builds are identical with and without them, so no group name can make a Kubernetes object invalid."""
    username = accepted(authenticator, raw)
    assume(username is not None)
    without = k8s_objects(spawners, spawners.make(username, "", groups=[]))
    with_groups = k8s_objects(spawners, spawners.make(username, "", groups=groups))
    assert with_groups == without


def test_group_names_never_reach_certificates():
    """The minter takes no groups (its only inputs are the user name, e-mail and time), so no group name can
    reach a certificate or token; the SANs come from the user name only (checked below)."""
    import inspect

    from casa_hub.minter import CasaMinter

    assert list(inspect.signature(CasaMinter.mint).parameters) == ["self", "user", "email", "now"]


# ------------------------------------------------------------------ Dask certificate SANs
@pytest.fixture(scope="module")
def dask_minter(tmp_path_factory):
    return make_minter(tmp_path_factory.mktemp("sans-keys"), kinds=("xcache", "dask-tls"))


@settings(FUZZ, max_examples=60)
@given(raw=raw_usernames)
@example(raw="a" * 63)
@example(raw="alice.smith")
def test_dask_certificate_sans_are_dns_names(authenticator, dask_minter, raw):
    """The scheduler and worker certificates minted for any accepted user name carry only valid DNS names
    (every label <= 63, with the default ``dask-{username}`` template) or IP addresses in their SANs."""
    username = accepted(authenticator, raw)
    assume(username is not None)
    bundle = dask_minter.mint(username)
    for role in ("scheduler", "worker"):
        cert = x509.load_pem_x509_certificate(bundle.files[f"dask/{role}.crt"].content)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
        assert names and all(is_dns_name(n) for n in names), names
        assert len(names) == len(dask_minter.kind("dask-tls").hostnames) - len(san.get_values_for_type(x509.IPAddress))


@FUZZ
@given(raws=st.lists(raw_usernames, min_size=2, max_size=6))
@example(raws=["alice.smith", "alice-smith"])
def test_dask_sans_never_collide(authenticator, raws):
    """Distinct users get distinct DNS labels in their SANs, also when a user takes another user's label
    (with its hash) as their own name."""
    users = {u for u in (accepted(authenticator, r) for r in raws) if u}
    users |= {dask_tls.dns_label(u) for u in users}  # the squatters
    users = {u for u in users if accepted(authenticator, u) == u}
    labels: dict[str, str] = {}
    for user in sorted(users):
        owner = labels.setdefault(dask_tls.dns_label(user), user)
        assert owner == user, f"{user!r} and {owner!r} share the SAN label {dask_tls.dns_label(user)!r}"

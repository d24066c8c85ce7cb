"""Per-user CA, role certificates, the immutable bundle and the minter's pipeline (pure)."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from casa_hub.credentials import dask_tls
from casa_hub.credentials.bundle import BundleFile, CredentialBundle
from tests.support import make_minter
from tests.user_names import HOSTILE_PAIRS, pair_id

NOW = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.timezone.utc)
SECRET = b"s" * 48


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_ca_is_stable_and_deterministic():
    a = dask_tls.user_ca(SECRET, "alice")
    b = dask_tls.user_ca(SECRET, "alice")
    assert a.cert_pem == b.cert_pem  # same bytes: RFC 6979 signature over a fixed validity window
    assert _cert(a.cert_pem).extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize("other", [dict(user="bob"), dict(generation=1), dict(secret=b"t" * 48)])
def test_ca_changes_with_user_generation_or_secret(other):
    kw = dict(secret=SECRET, user="alice", generation=0)
    base = dask_tls.user_ca(**kw).key.public_key().public_numbers()
    kw.update(other)
    assert dask_tls.user_ca(**kw).key.public_key().public_numbers() != base


def test_short_ca_secret_is_refused():
    with pytest.raises(ValueError, match="32 bytes"):
        dask_tls.derive_ca_key(b"short", "alice")


@pytest.mark.parametrize(
    "role,usages",
    [
        ("scheduler", {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("worker", {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("client", {ExtendedKeyUsageOID.CLIENT_AUTH}),
    ],
)
def test_leaf_usages_sans_and_lifetime(role, usages):
    ca = dask_tls.user_ca(SECRET, "alice")
    leaf = dask_tls.issue_leaf(
        ca=ca,
        user="alice",
        role=role,
        hostnames=["dask-alice", "127.0.0.1"],
        now=NOW,
        lifetime=datetime.timedelta(hours=24),
    )
    cert = _cert(leaf.cert_pem)
    assert set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == usages
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["dask-alice"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert cert.not_valid_after_utc == NOW + datetime.timedelta(hours=24) == leaf.expires_at
    assert cert.issuer == ca.subject
    ca.key.public_key().verify(
        cert.signature,
        cert.tbs_certificate_bytes,
        __import__("cryptography.hazmat.primitives.asymmetric.ec", fromlist=["ECDSA"]).ECDSA(
            cert.signature_hash_algorithm
        ),
    )
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_leaf_never_outlives_its_ca():
    ca = dask_tls.user_ca(SECRET, "alice")
    leaf = dask_tls.issue_leaf(
        ca=ca,
        user="alice",
        role="worker",
        hostnames=[],
        now=ca.not_after - datetime.timedelta(hours=1),
        lifetime=datetime.timedelta(days=10),
    )
    assert leaf.expires_at == ca.not_after


@pytest.mark.parametrize("bad", [dict(role="admin"), dict(lifetime=datetime.timedelta(0))])
def test_leaf_bad_input(bad):
    kw = dict(
        ca=dask_tls.user_ca(SECRET, "a"),
        user="a",
        role="worker",
        hostnames=[],
        now=NOW,
        lifetime=datetime.timedelta(hours=1),
    )
    kw.update(bad)
    with pytest.raises(ValueError):
        dask_tls.issue_leaf(**kw)


# ---------------------------------------------------------------- bundle


def test_bundle_is_immutable_and_hides_secrets_in_repr(minter):
    bundle = minter.mint("alice")
    with pytest.raises(TypeError):
        bundle.files["x"] = BundleFile(b"")
    with pytest.raises(dataclasses.FrozenInstanceError):
        bundle.user = "mallory"
    token = bundle.files["xcache.token"].content.decode().strip()
    assert token not in repr(bundle) and token not in repr(bundle.files["xcache.token"])


def test_bundle_round_trips_through_auth_state_json(minter):
    bundle = minter.mint("alice")
    again = CredentialBundle.from_dict(json.loads(json.dumps(bundle.to_dict())))
    assert again == bundle
    assert again.expires_at == bundle.expires_at


def test_bundle_env_points_into_mount(minter):
    env = minter.mint("alice").env_for("/etc/casa/")
    assert env["BEARER_TOKEN_FILE"] == "/etc/casa/xcache.token"
    assert env["_CONDOR_SEC_TOKEN_DIRECTORY"] == "/etc/casa/condor-tokens"
    assert all("{mount}" not in v for v in env.values())


# ---------------------------------------------------------------- minter


def _all_secret_forms(minter) -> dict[str, bytes]:
    """Every hub-held secret in every encoding it could leak in."""
    forms = {}
    ca = minter.kind("dask-tls").user_ca("alice")
    der = ca.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    forms["ca key der"] = der
    forms["ca key b64"] = base64.b64encode(der)
    forms["ca key scalar"] = ca.key.private_numbers().private_value.to_bytes(32, "big")
    for owner, name in (
        (minter, "issuer_key_file"),
        (minter.kind("dask-tls"), "ca_secret_file"),
        (minter.kind("macaroon"), "secret_file"),
        (minter.kind("servicex"), "secret_file"),
        (minter.kind("htcondor"), "signing_key_file"),
    ):
        raw = Path(getattr(owner, name)).read_bytes()
        forms[f"{type(owner).__name__}.{name}"] = raw.strip()
    issuer_der = minter.issuer_keys[0].private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    forms["issuer der"] = issuer_der
    return forms


def test_no_hub_secret_enters_the_bundle(minter):
    bundle = minter.mint("alice")
    blob = b"\n".join(f.content for f in bundle.files.values()) + json.dumps(dict(bundle.env)).encode()
    pem_bodies = [
        b"".join(f.content.splitlines()[1:-1]) for f in bundle.files.values() if f.content.startswith(b"-----")
    ]
    decoded = b"".join(base64.b64decode(b) for b in pem_bodies if b)
    for name, secret in _all_secret_forms(minter).items():
        assert secret not in blob and secret not in decoded, f"{name} leaked into the bundle"


def test_every_token_has_expiry_and_per_user_subject(minter):
    import jwt

    for user in ("alice", "bob"):
        bundle = minter.mint(user)
        for path in ("xcache.token", "condor-tokens/casa", "servicex.token"):
            claims = jwt.decode(bundle.files[path].content.strip(), options={"verify_signature": False})
            assert claims["exp"] > claims["iat"]
            assert user in claims["sub"]
            assert "aud" in claims or "scope" in claims or claims.get("type") == "access"
            assert bundle.files[path].expires_at is not None
        assert bundle.expires_at == min(f.expires_at for f in bundle.files.values() if f.expires_at)


def test_secret_files_are_owner_only(minter):
    bundle = minter.mint("alice")
    for path, f in bundle.files.items():
        if path.endswith((".token", ".key", ".macaroon")) or path.startswith("condor-tokens/"):
            assert f.mode == 0o400, path


def test_manifest_lists_credentials_without_secrets(minter):
    bundle = minter.mint("alice")
    manifest = json.loads(bundle.files["casa.json"].content)
    assert manifest["user"] == "alice"
    assert set(manifest["credentials"]) >= {"xcache", "macaroon", "htcondor", "servicex", "dask-client"}
    token = bundle.files["xcache.token"].content.strip()
    assert token not in bundle.files["casa.json"].content


def test_scopes_template_the_user_dir(tmp_path):
    m = make_minter(tmp_path, XCacheToken={"scopes": ["storage.read:/store", "storage.create:/store/user/{userdir}"]})
    import jwt

    claims = jwt.decode(m.mint("carol").files["xcache.token"].content.strip(), options={"verify_signature": False})
    assert claims["scope"] == "storage.read:/store storage.create:/store/user/carol~"


def test_missing_key_file_is_a_clear_error(tmp_path):
    m = make_minter(tmp_path, CasaMinter={"issuer_key_file": str(tmp_path / "nope.pem")})
    with pytest.raises(RuntimeError, match="issuer signing key.*nope.pem"):
        m.load_keys()


def test_empty_user_is_refused(minter):
    with pytest.raises(ValueError, match="empty user"):
        minter.mint("")


def test_macaroon_lifetime_trait_is_validated(tmp_path):
    from traitlets import TraitError

    from casa_hub.credentials.kinds.xcache_macaroon import XCacheMacaroon

    with pytest.raises(TraitError, match=r"^XCacheMacaroon\.lifetime=90000: XRootD caps macaroons at 86400 s"):
        XCacheMacaroon(lifetime=90000)
    with pytest.raises(RuntimeError, match=r"^XCacheMacaroon\.lifetime=90000: XRootD caps"):  # at hub start
        make_minter(tmp_path, XCacheMacaroon={"lifetime": 90000})
    assert XCacheMacaroon(lifetime=86400).lifetime == 86400


def test_email_identity_needs_an_email(tmp_path):
    m = make_minter(tmp_path, ServiceXToken={"identity": "email"})
    with pytest.raises(ValueError, match="e-mail"):
        m.mint("alice")
    assert m.mint("alice", email="alice@example.org").files["servicex.token"]


@pytest.mark.parametrize("name", ["alice", "dörte", "Carol.UPPER", "a@b.c", "x" * 100, "名前"])
def test_dns_label_is_safe_and_stable(name):
    label = dask_tls.dns_label(name)
    assert 0 < len(label) <= 63 and label.isascii()
    assert all(c.isalnum() or c == "-" for c in label) and not label.startswith("-")
    assert label == dask_tls.dns_label(name)
    x509.DNSName(label)  # accepted by cryptography


def test_dns_labels_do_not_collide():
    assert dask_tls.dns_label("a.b") != dask_tls.dns_label("a-b")
    assert dask_tls.dns_label("a-b") == "a-b"


# ---------------------------------------------------------------- subjects name their user (issue 10)

CN_MAX_BYTES = 64  # X.509 ub-common-name, in UTF-8 bytes
_CN_SHORTENED = re.compile(r"(?P<head>.*)/(?P<hash>[0-9a-f]{16})(?P<suffix>[^/]*)", re.DOTALL)


def _cn(name: x509.Name) -> str:
    (attr,) = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return attr.value


def _subjects(user: str) -> dict[str, x509.Name]:
    """The CA subject and every leaf subject the module issues for ``user``."""
    ca = dask_tls.user_ca(SECRET, user)
    subjects = {"ca": ca.subject}
    for role in dask_tls.ROLES:
        leaf = dask_tls.issue_leaf(
            ca=ca, user=user, role=role, hostnames=[], now=NOW, lifetime=datetime.timedelta(hours=1)
        )
        subjects[role] = _cert(leaf.cert_pem).subject
    return subjects


def _assert_readable(cn: str, prefix: str, user: str, suffix: str) -> None:
    """``cn`` is the full text, or a start of ``prefix + user`` (keeping some of the name) + ``/`` + hash."""
    assert len(cn.encode()) <= CN_MAX_BYTES, cn
    if cn == f"{prefix}{user}{suffix}":
        return
    m = _CN_SHORTENED.fullmatch(cn)
    assert m, cn
    assert m["hash"] == hashlib.sha256(user.encode()).hexdigest()[:16] and m["suffix"] == suffix
    assert m["head"].startswith(prefix) and len(m["head"]) > len(prefix), cn
    assert user.startswith(m["head"][len(prefix) :]), cn


def test_short_names_keep_their_subjects_and_their_exact_ca():
    """Names that fit are unchanged, so users' existing CA certificates (and the CA files their clients
    trust) are the very same bytes as before."""
    subjects = _subjects("alice")
    assert subjects["ca"].rfc4514_string() == "CN=Casa Dask CA for alice (generation 0),O=Casa Hub"
    assert {r: subjects[r].rfc4514_string() for r in dask_tls.ROLES} == {
        r: f"CN={r}.alice,O=Casa Hub" for r in dask_tls.ROLES
    }
    assert _cn(dask_tls.user_ca(SECRET, "dörte", 3).subject) == "Casa Dask CA for dörte (generation 3)"
    pinned = {
        "alice": "247f6c74ca1f58272093d43f4401a3905f78717eb69de20fee0319590a5061af",
        "dörte": "f6ab73c3214544f35b208597bc4a96952c120af5aa0a30e4d136d318767b97cb",
        "用户": "491d1ffde4a7f6c0ae3a0694edba27d02d175f4b162195a36feccf7a0fda20a4",
    }
    for user, digest in pinned.items():
        assert hashlib.sha256(dask_tls.user_ca(SECRET, user).cert_pem).hexdigest() == digest, user


def test_names_that_differ_after_64_bytes_get_different_subjects():
    """Failed before issue 10: both CNs were cut at 64 bytes to the same 'Casa Dask CA for xxx…' and
    'worker.xxx…'."""
    first, second = _subjects("x" * 70 + "1"), _subjects("x" * 70 + "2")
    for kind in first:
        assert first[kind] != second[kind], kind
    assert _cn(first["ca"]) == (
        "Casa Dask CA for "
        + "x" * 15
        + "/"
        + hashlib.sha256(("x" * 70 + "1").encode()).hexdigest()[:16]
        + " (generation 0)"
    )
    assert _cn(first["worker"]).startswith("worker." + "x" * 40 + "/")


@pytest.mark.parametrize("pair", HOSTILE_PAIRS, ids=pair_id)
def test_every_hostile_pair_gets_distinct_readable_subjects(pair):
    first, second, _why = pair
    subjects = {user: _subjects(user) for user in (first, second)}
    for kind in ("ca", *dask_tls.ROLES):
        assert subjects[first][kind] != subjects[second][kind], kind
        assert _cn(subjects[first][kind]) != _cn(subjects[second][kind]), kind
    for user, by_kind in subjects.items():
        _assert_readable(_cn(by_kind["ca"]), "Casa Dask CA for ", user, " (generation 0)")
        for role in dask_tls.ROLES:
            _assert_readable(_cn(by_kind[role]), f"{role}.", user, "")


def test_common_name_keeps_what_fits_and_cuts_between_characters():
    assert dask_tls.common_name("worker.", "a" * 57) == "worker." + "a" * 57  # exactly 64 bytes
    cut = dask_tls.common_name("worker.", "a" * 58)
    assert cut == "worker." + "a" * 40 + "/" + hashlib.sha256(b"a" * 58).hexdigest()[:16]
    assert len(cut.encode()) == 64
    # two-, three- and four-byte characters: the cut never splits one and the result never exceeds 64 bytes
    for char in ("é", "用", "😀"):
        for n in range(1, 70):
            cn = dask_tls.common_name("worker.", char * n)
            assert len(cn.encode()) <= 64
            _assert_readable(cn, "worker.", char * n, "")


def test_a_name_with_a_slash_cannot_pose_as_a_shortened_one():
    """The hub refuses '/' in names; were one to arrive anyway it is always shortened, so it cannot choose
    the (public) shortened CN of another user as its name."""
    victim = "v" * 80
    squatter = dask_tls.common_name("worker.", victim).removeprefix("worker.")
    assert len(f"worker.{squatter}".encode()) <= 64
    assert dask_tls.common_name("worker.", squatter) != dask_tls.common_name("worker.", victim)
    assert dask_tls.common_name("worker.", "a/b").startswith("worker.a/b/")


@pytest.mark.parametrize("prefix,suffix", [("a/", ""), ("", "/x"), ("p" * 50, "")])
def test_common_name_refuses_wording_that_breaks_it(prefix, suffix):
    with pytest.raises(ValueError):
        dask_tls.common_name(prefix, "u" * 80, suffix)


@settings(max_examples=300, deadline=None)
@given(
    users=st.lists(
        st.one_of(
            st.text(min_size=1, max_size=90),
            st.builds(
                lambda c, n, t: c * n + t, st.sampled_from(["x", "é", "用"]), st.integers(20, 80), st.text(max_size=3)
            ),
        ),
        min_size=2,
        max_size=4,
        unique=True,
    )
)
def test_distinct_users_never_share_a_common_name(users):
    users = [u.replace("/", "") or "u" for u in users]  # hub names never contain '/'
    assume(len(set(users)) == len(users))
    for prefix, suffix in (("Casa Dask CA for ", " (generation 12)"), ("scheduler.", ""), ("client.", "")):
        names = [dask_tls.common_name(prefix, u, suffix) for u in users]
        assert len(set(names)) == len(names), names
        for user, cn in zip(users, names):
            _assert_readable(cn, prefix, user, suffix)


@pytest.mark.parametrize(
    "section,trait,content,message",
    [
        ("DaskTLS", "ca_secret_file", b"short", "must be at least 32 bytes"),
        (
            "CasaMinter",
            "issuer_key_file",
            b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
            "is not usable",
        ),
        ("HTCondorToken", "signing_key_file", b"\0abc", "is not usable"),  # HTCondor cuts the file at its first NUL
        ("XCacheMacaroon", "secret_file", b"", "is empty"),
        ("ServiceXToken", "secret_file", b"\n", "is empty"),
    ],
)
def test_unusable_keys_fail_at_start_naming_the_trait(tmp_path, section, trait, content, message):
    """A malformed or too short key is one message naming the trait when the hub starts, not a traceback later."""
    from tests.support import make_minter

    bad = tmp_path / "bad-key"
    bad.write_bytes(content)
    m = make_minter(tmp_path / "keys", **{section: {trait: str(bad)}})
    with pytest.raises(RuntimeError, match=rf"^{section}\.{trait}.*{message}"):
        m.load_keys()

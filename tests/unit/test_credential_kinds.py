"""Credential kinds: the registry (entry points, unknown names, clashes, failing keys) and what each built-in kind
mints (exact claims, files, env variables, manifest entries); the fast paths give what their references give."""

from __future__ import annotations

import datetime
import json
import logging
import textwrap

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pymacaroons import Macaroon
from traitlets import TraitError
from traitlets.config import Config

from casa_hub.credentials import htcondor, issuer, layout, xcache
from casa_hub.credentials.jws import JWSSigner
from casa_hub.credentials.kind import CredentialKind, installed_kinds
from casa_hub.credentials.kinds.mlflow import MLflowToken
from casa_hub.credentials.kinds.servicex import ServiceXToken
from casa_hub.credentials.kinds.xcache_token import XCacheToken
from casa_hub.minter import CasaMinter
from tests.support import BUILT_IN_KINDS, make_minter, write_keys

NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=datetime.timezone.utc)
IAT = int(NOW.timestamp())


def _at(seconds: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(IAT + seconds, datetime.timezone.utc)


def _claims(token: bytes | str) -> dict:
    return jwt.decode(token.strip() if isinstance(token, bytes) else token, options={"verify_signature": False})


def _manifest(bundle) -> dict:
    return json.loads(bundle.files[layout.MANIFEST].content)["credentials"]


# ====================================================================================== the registry
def test_the_built_in_kinds_are_installed_through_the_entry_point_group():
    assert {"xcache", "macaroon", "htcondor", "servicex", "dask-tls", "mlflow"} <= set(installed_kinds())
    assert CasaMinter().kinds == ["xcache", "dask-tls"]


@pytest.fixture
def site_packages(tmp_path, monkeypatch):
    """A directory on sys.path where a test installs kinds as a site package would: a module and a dist-info
    with an entry_points.txt (read by importlib.metadata, as in a real environment)."""
    directory = tmp_path / "site-packages"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    installed_kinds.cache_clear()

    def install(dist: str, module: str, source: str, entry_points: str):
        (directory / f"{module}.py").write_text(textwrap.dedent(source))
        info = directory / f"{dist}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text("[casa_hub.credentials]\n" + textwrap.dedent(entry_points))

    yield install
    installed_kinds.cache_clear()


SITE_KINDS = """
from casa_hub.credentials.bundle import BundleFile
from casa_hub.credentials.kind import CredentialKind, Minted
from casa_hub.credentials.layout import ManifestEntry
from traitlets import Unicode


class Plain(CredentialKind):
    name = "plain"
    label = "Plain file"
    content = Unicode("hello", help="what the file holds").tag(config=True)

    def files(self):
        return ("plain.txt",)

    def env_names(self):
        return ("PLAIN_FILE",)

    def mint(self, request):
        entry = ManifestEntry(self.name, self.label, "plain.txt", "PLAIN_FILE")
        return Minted({"plain.txt": BundleFile(self.content.encode(), 0o444)}, {"PLAIN_FILE": "{mount}/plain.txt"},
                      ((entry, None),))


class SameFile(Plain):
    name = "same-file"

    def env_names(self):
        return ("OTHER_FILE",)


class SameEnv(Plain):
    name = "same-env"

    def files(self):
        return ("other.txt",)


class SneakyFile(SameFile):
    name = "sneaky"

    def files(self):
        return ("declared.txt",)


class BadPath(Plain):
    name = "bad-path"

    def files(self):
        return ("../escape",)


class UnderADaskFile(Plain):
    name = "nested"

    def files(self):
        return ("dask/ca.pem/x",)

    def env_names(self):
        return ("NESTED",)


class SameEntry(Plain):
    name = "same-entry"  # but its manifest entry is called "plain"

    def files(self):
        return ("entry.txt",)

    def env_names(self):
        return ("ENTRY_FILE",)

    def mint(self, request):
        entry = ManifestEntry("plain", self.label, "entry.txt", "ENTRY_FILE")
        return Minted({"entry.txt": BundleFile(b"x", 0o444)}, {"ENTRY_FILE": "{mount}/entry.txt"}, ((entry, None),))


class Misnamed(Plain):
    name = "something-else"


class NoKeys(Plain):
    name = "no-keys"
    key_file = Unicode("", help="the key").tag(config=True)

    def load_keys(self):
        self.load_secret("key_file", "no-keys signing key")


NotAKind = object
"""

SITE_ENTRY_POINTS = """
plain = site_kinds:Plain
same-file = site_kinds:SameFile
same-env = site_kinds:SameEnv
sneaky = site_kinds:SneakyFile
bad-path = site_kinds:BadPath
nested = site_kinds:UnderADaskFile
misnamed = site_kinds:Misnamed
same-entry = site_kinds:SameEntry
no-keys = site_kinds:NoKeys
not-a-kind = site_kinds:NotAKind
broken = site_kinds_missing_module:Kind
"""


@pytest.fixture
def site_kinds(site_packages):
    site_packages("site-kinds", "site_kinds", SITE_KINDS, SITE_ENTRY_POINTS)


def test_a_kind_from_an_entry_point_is_minted_and_configured_in_its_own_section(site_kinds, tmp_path):
    minter = make_minter(tmp_path, kinds=("plain", "dask-tls"), Plain={"content": "from the config"})
    bundle = minter.mint("alice", now=NOW)
    assert bundle.files["plain.txt"].content == b"from the config" and bundle.files["plain.txt"].mode == 0o444
    assert bundle.env["PLAIN_FILE"] == "{mount}/plain.txt"
    assert _manifest(bundle)["plain"] == {
        "name": "plain",
        "label": "Plain file",
        "file": "plain.txt",
        "env": "PLAIN_FILE",
        "expires_at": None,
    }
    assert minter.kind("plain").parent is minter


def test_an_unknown_kind_is_refused_naming_the_installed_ones(tmp_path):
    with pytest.raises(RuntimeError) as e:
        make_minter(tmp_path, kinds=("xcache", "xcahce"))
    assert str(e.value).startswith("CasaMinter.kinds: no credential kind 'xcahce' is installed; installed kinds: ")
    assert "dask-tls, htcondor, macaroon, mlflow, servicex, xcache" in str(e.value)


def test_a_kind_listed_twice_is_refused():
    with pytest.raises(TraitError, match=r"CasaMinter.kinds=\['xcache', 'xcache'\]: 'xcache' is empty or listed twice"):
        CasaMinter(kinds=["xcache", "xcache"])


@pytest.mark.parametrize(
    "kinds, message",
    [
        (("plain", "same-file"), "credential kinds 'plain' and 'same-file' would both write 'plain.txt'"),
        (("plain", "same-env"), "credential kinds 'plain' and 'same-env' would both set the env variable PLAIN_FILE"),
        (("dask-tls", "nested"), "credential kinds 'dask-tls' and 'nested' would both write 'dask/ca.pem/x' (or a"),
        (("bad-path",), "credential kind 'bad-path': bundle path '../escape' cannot be a Secret key"),
        (
            ("misnamed",),
            "CasaMinter.kinds: site_kinds:Misnamed calls itself 'something-else' but is installed as 'misnamed'",
        ),
        (("not-a-kind",), "CasaMinter.kinds: site_kinds:NotAKind (kind 'not-a-kind') is not a CredentialKind subclass"),
        (
            ("broken",),
            "CasaMinter.kinds: cannot load credential kind 'broken' (site_kinds_missing_module:Kind): No module named",
        ),
    ],
)
def test_kinds_that_clash_or_do_not_load_are_refused_at_load(site_kinds, tmp_path, kinds, message):
    with pytest.raises(RuntimeError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        make_minter(tmp_path, kinds=kinds)


def test_a_kind_minting_what_another_kind_owns_is_refused_at_mint(site_kinds, tmp_path):
    """A kind that writes a file it did not declare, clashing with another kind's, loses nothing silently."""
    minter = make_minter(tmp_path, kinds=("plain", "sneaky"))
    with pytest.raises(RuntimeError, match="credential kind 'sneaky' minted a file or env variable another kind did"):
        minter.mint("alice")
    with pytest.raises(RuntimeError, match=r"two credential kinds named the same manifest entry: \['plain', 'plain'\]"):
        make_minter(tmp_path / "2", kinds=("plain", "same-entry")).mint("alice")


def test_a_kind_whose_keys_fail_stops_the_hub_with_one_line(site_kinds, tmp_path, caplog):
    from casa_hub.authenticator import CasaAuthenticator

    keys = write_keys(tmp_path / "keys")
    c = Config()
    c.CasaAuthenticator.oidc_issuer = "http://127.0.0.1:1"
    c.CasaAuthenticator.client_id = "casa-test"
    c.CasaAuthenticator.client_secret = "x"
    c.Authenticator.enable_auth_state = True
    c.CasaMinter.kinds = ["xcache", "no-keys"]
    c.CasaMinter.issuer_key_file = str(keys["issuer"])
    c.NoKeys.key_file = str(tmp_path / "absent.key")
    with caplog.at_level(logging.CRITICAL), pytest.raises(SystemExit) as e:
        CasaAuthenticator(config=c)
    assert e.value.code == 1
    assert (
        f"Casa cannot start: NoKeys.key_file: cannot read the no-keys signing key at "
        f"'{tmp_path / 'absent.key'}': No such file or directory" in caplog.text
    )


@pytest.mark.parametrize(
    "section, message",
    [
        ({"HTCondorToken": {"signing_key_file": ""}}, "HTCondorToken.signing_key_file is not set: HTCondorToken needs"),
        ({"MLflowToken": {"tracking_uri": ""}}, "MLflowToken.tracking_uri is not set: the MLflow token needs its"),
    ],
)
def test_a_built_in_kind_without_its_settings_fails_at_load(tmp_path, section, message):
    minter = make_minter(tmp_path, kinds=(*BUILT_IN_KINDS, "mlflow"), **section)
    with pytest.raises(RuntimeError, match="^" + message):
        minter.load_keys()


def test_the_issuer_is_only_needed_by_kinds_that_sign_with_it(tmp_path):
    minter = make_minter(tmp_path, kinds=("htcondor", "dask-tls"), CasaMinter={"issuer_key_file": ""})
    minter.load_keys()
    assert "xcache.token" not in minter.mint("alice").files
    with pytest.raises(RuntimeError, match="CasaMinter.issuer_key_file is not set"):
        make_minter(tmp_path / "2", kinds=("mlflow",), CasaMinter={"issuer_key_file": ""}).load_keys()


# ====================================================================================== each built-in kind
@pytest.fixture(scope="module")
def minter(tmp_path_factory):
    m = make_minter(tmp_path_factory.mktemp("keys"), kinds=(*BUILT_IN_KINDS, "mlflow"))
    m.load_keys()
    return m


@pytest.fixture(scope="module")
def bundle(minter):
    return minter.mint("bob@cern.ch", email="bob@cern.ch", now=NOW)


def _verify_es256(minter, token: str, audience: str) -> dict:
    key = minter.issuer_keys[0]
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "kid": key.kid, "typ": "JWT"}
    return jwt.decode(
        token, key.private_key.public_key(), algorithms=["ES256"], audience=audience, options={"verify_exp": False}
    )


def test_xcache_token(minter, bundle):
    f = bundle.files["xcache.token"]
    claims = _verify_es256(minter, f.content.decode().strip(), "https://wlcg.cern.ch/jwt/v1/any")
    assert claims == {
        "wlcg.ver": "1.0",
        "iss": "https://127.0.0.1:1/casa-issuer",
        "sub": "bob@cern.ch",
        "aud": "https://wlcg.cern.ch/jwt/v1/any",
        "scope": "storage.read:/store",
        "iat": IAT,
        "nbf": IAT,
        "exp": IAT + 3600,
        "jti": claims["jti"],
    }
    assert (f.mode, f.expires_at) == (0o400, _at(3600))
    assert bundle.env["BEARER_TOKEN_FILE"] == "{mount}/xcache.token" and "CASA_STORAGE_AREA" not in bundle.env
    assert _manifest(bundle)["xcache"] == {
        "name": "xcache",
        "label": "XCache storage token",
        "file": "xcache.token",
        "env": "BEARER_TOKEN_FILE",
        "audience": "https://wlcg.cern.ch/jwt/v1/any",
        "scopes": ["storage.read:/store"],
        "expires_at": _at(3600).isoformat(),
    }


def test_xcache_macaroon(minter, bundle):
    f = bundle.files["xcache.macaroon"]
    m = Macaroon.deserialize(f.content.decode().strip())
    assert m.location == "CASA_TEST"
    before = (NOW + datetime.timedelta(hours=6)).replace(microsecond=0)
    assert [c.caveat_id for c in m.caveats] == [
        "name:bob@cern.ch",
        "activity:DOWNLOAD,READ_METADATA,LIST",
        "path:/store",
        f"before:{before.strftime('%Y-%m-%dT%H:%M:%SZ')}",
    ]
    assert (f.mode, f.expires_at) == (0o400, before)
    assert bundle.env["CASA_MACAROON_FILE"] == "{mount}/xcache.macaroon"
    assert _manifest(bundle)["macaroon"] == {
        "name": "macaroon",
        "label": "XCache macaroon",
        "file": "xcache.macaroon",
        "env": "CASA_MACAROON_FILE",
        "path": "/store",
        "expires_at": before.isoformat(),
    }


def test_htcondor_token(minter, bundle):
    f = bundle.files["condor-tokens/casa"]
    token = f.content.decode().strip()
    claims = _claims(token)
    account = htcondor.condor_user("bob@cern.ch")
    assert claims == {
        "iat": IAT,
        "exp": IAT + 6 * 3600,
        "iss": "casa.test",
        "jti": claims["jti"],
        "sub": f"{account}@casa.test",
        "scope": "condor:/READ condor:/WRITE",
    }
    # bit exact: what PyJWT (and condor_token_create) make of the same claims with the pool's derived key
    kind = minter.kind("htcondor")
    key = htcondor.signing_key_from_file(open(kind.signing_key_file, "rb").read(), "POOL")
    assert token == jwt.encode(claims, key, algorithm="HS256", headers={"kid": "POOL"})
    assert (f.mode, f.expires_at) == (0o400, _at(6 * 3600))
    assert bundle.env["_CONDOR_SEC_TOKEN_DIRECTORY"] == "{mount}/condor-tokens"
    assert bundle.env["CASA_CONDOR_USER"] == account
    assert _manifest(bundle)["htcondor"] == {
        "name": "htcondor",
        "label": "HTCondor IDTOKEN",
        "file": "condor-tokens/casa",
        "env": "_CONDOR_SEC_TOKEN_DIRECTORY",
        "scopes": ["condor:/READ", "condor:/WRITE"],
        "user": account,
        "expires_at": _at(6 * 3600).isoformat(),
    }


def test_servicex_token(minter, bundle):
    f = bundle.files["servicex.token"]
    token = f.content.decode().strip()
    claims = _claims(token)
    assert claims == {
        "fresh": False,
        "iat": IAT,
        "jti": claims["jti"],
        "type": "access",
        "sub": "bob@cern.ch",
        "nbf": IAT,
        "exp": IAT + 3600,
    }
    secret = open(minter.kind("servicex").secret_file, "rb").read().strip()
    assert token == jwt.encode(claims, secret, algorithm="HS256")  # flask-jwt-extended's own encoding
    assert (f.mode, f.expires_at) == (0o400, _at(3600))
    config = bundle.files["servicex.yaml"]
    assert (config.mode, config.expires_at) == (0o444, None)
    assert json.loads(config.content)["api_endpoints"] == [
        {"endpoint": "http://127.0.0.1:1", "name": "casa", "token": ""}
    ]
    assert bundle.env["CASA_SERVICEX_TOKEN_FILE"] == "{mount}/servicex.token"
    assert bundle.env["CASA_SERVICEX_CONFIG"] == "{mount}/servicex.yaml"
    assert _manifest(bundle)["servicex"] == {
        "name": "servicex",
        "label": "ServiceX token",
        "file": "servicex.token",
        "env": "CASA_SERVICEX_TOKEN_FILE",
        "endpoint": "http://127.0.0.1:1",
        "expires_at": _at(3600).isoformat(),
    }


def test_dask_tls(minter, bundle):
    expires = NOW + datetime.timedelta(hours=24)
    assert (bundle.files["dask/ca.pem"].mode, bundle.files["dask/ca.pem"].expires_at) == (0o444, None)
    for role in ("scheduler", "worker", "client"):
        cert, key = bundle.files[f"dask/{role}.crt"], bundle.files[f"dask/{role}.key"]
        assert (cert.mode, key.mode, cert.expires_at, key.expires_at) == (0o444, 0o400, expires, expires)
        prefix = f"DASK_DISTRIBUTED__COMM__TLS__{role.upper()}"
        assert (bundle.env[f"{prefix}__CERT"], bundle.env[f"{prefix}__KEY"]) == (
            f"{{mount}}/dask/{role}.crt",
            f"{{mount}}/dask/{role}.key",
        )
        assert _manifest(bundle)[f"dask-{role}"] == {
            "name": f"dask-{role}",
            "label": f"Dask {role} certificate",
            "file": f"dask/{role}.crt",
            "env": f"{prefix}__CERT",
            "key_file": f"dask/{role}.key",
            "expires_at": expires.isoformat(),
        }
    assert bundle.env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"] == "{mount}/dask/ca.pem"
    assert bundle.env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
    assert _manifest(bundle)["dask-ca"] == {
        "name": "dask-ca",
        "label": "Dask CA certificate",
        "file": "dask/ca.pem",
        "env": "DASK_DISTRIBUTED__COMM__TLS__CA_FILE",
        "expires_at": None,
    }


def test_mlflow_token(minter, bundle):
    f = bundle.files["mlflow.token"]
    claims = _verify_es256(minter, f.content.decode().strip(), "https://mlflow.casa.test")
    assert claims == {
        "wlcg.ver": "1.0",
        "iss": "https://127.0.0.1:1/casa-issuer",
        "sub": "bob@cern.ch",
        "aud": "https://mlflow.casa.test",  # default: the tracking URI
        "scope": "mlflow",
        "iat": IAT,
        "nbf": IAT,
        "exp": IAT + 3600,
        "jti": claims["jti"],
    }
    assert (f.mode, f.expires_at) == (0o400, _at(3600))
    assert bundle.env["CASA_MLFLOW_TOKEN_FILE"] == "{mount}/mlflow.token"
    assert bundle.env["MLFLOW_TRACKING_URI"] == "https://mlflow.casa.test"
    assert _manifest(bundle)["mlflow"] == {
        "name": "mlflow",
        "label": "MLflow tracking token",
        "file": "mlflow.token",
        "env": "CASA_MLFLOW_TOKEN_FILE",
        "audience": "https://mlflow.casa.test",
        "scopes": ["mlflow"],
        "tracking_uri": "https://mlflow.casa.test",
        "expires_at": _at(3600).isoformat(),
    }


def test_the_bundle_is_exactly_what_the_kinds_declare(minter, bundle):
    declared_files = {path for kind in minter.enabled_kinds for path in kind.files()}
    declared_env = {name for kind in minter.enabled_kinds for name in (*kind.env_names(), *kind.env_default_names())}
    assert set(bundle.files) == declared_files | {layout.MANIFEST}
    assert set(bundle.env) <= declared_env | {layout.CREDENTIALS_DIR_ENV}
    manifest = json.loads(bundle.files[layout.MANIFEST].content)
    assert (manifest["user"], manifest["issued_at"]) == ("bob@cern.ch", NOW.isoformat())
    assert all("{mount}" not in v or v.startswith("{mount}") for v in bundle.env.values())


def test_keys_are_fresh_per_mint_and_per_user(minter):
    a1, a2, b = minter.mint("alice", now=NOW), minter.mint("alice", now=NOW), minter.mint("bob", now=NOW)
    for path in ("xcache.token", "xcache.macaroon", "condor-tokens/casa", "servicex.token", "mlflow.token"):
        assert len({a1.files[path].content, a2.files[path].content, b.files[path].content}) == 3, path
    for role in ("scheduler", "worker", "client"):
        keys = {x.files[f"dask/{role}.key"].content for x in (a1, a2, b)}
        assert len(keys) == 3, role
    assert a1.files["dask/ca.pem"].content == a2.files["dask/ca.pem"].content != b.files["dask/ca.pem"].content


def test_a_changed_setting_takes_effect_at_once(minter):
    """Kinds cache what they derive from their settings (static env, manifest entries, per-user values); a
    setting changed afterwards (as tests and a live reconfiguration do) is not hidden by those caches."""
    kind = minter.kind("xcache")
    before = kind.scopes
    try:
        kind.scopes = ["storage.read:/store", "storage.create:/store/user/{userdir}"]
        bundle = minter.mint("carol")
        assert _claims(bundle.files["xcache.token"].content)["scope"].endswith("storage.create:/store/user/carol~")
        assert bundle.env["CASA_STORAGE_AREA"] == "/store/user/carol~"
    finally:
        kind.scopes = before
    assert "CASA_STORAGE_AREA" not in minter.mint("carol").env


# ====================================================================================== access token lifetimes
@pytest.mark.parametrize("cls", [XCacheToken, ServiceXToken, MLflowToken])
def test_access_tokens_follow_the_wlcg_profile(cls):
    assert cls().lifetime == 3600
    assert cls(lifetime=21600).lifetime == 21600
    with pytest.raises(TraitError) as e:
        cls(lifetime=21601)
    assert str(e.value).startswith(f"{cls.__name__}.lifetime=21601: an access token is a bearer credential")
    assert "caps access tokens at 21600 s (6 h)" in str(e.value)
    with pytest.raises(TraitError):
        cls(lifetime=0)


# ====================================================================================== fast paths = references
def test_jws_signer_gives_pyjwts_bytes():
    claims = {"sub": "alice", "iat": IAT, "exp": IAT + 60, "scope": "a b", "aud": ["x", "y"], "ünï": "cödé"}
    key = b"k" * 32
    assert JWSSigner("HS256", key, {"kid": "POOL"}).encode(claims) == jwt.encode(
        claims, key, algorithm="HS256", headers={"kid": "POOL"}
    )
    assert JWSSigner("HS256", key).encode(claims) == jwt.encode(claims, key, algorithm="HS256")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # PKCS#1 v1.5 is deterministic
    headers = {"kid": "k1", "typ": "at+jwt"}
    assert JWSSigner("RS256", rsa_key, headers).encode(claims) == jwt.encode(
        claims, rsa_key, algorithm="RS256", headers=headers
    )
    ec_key = ec.generate_private_key(ec.SECP256R1())  # ECDSA is not: same signing input, valid signature
    token = JWSSigner("ES256", ec_key, headers).encode(claims)
    reference = jwt.encode(claims, ec_key, algorithm="ES256", headers=headers)
    assert token.rsplit(".", 1)[0] == reference.rsplit(".", 1)[0]
    decoded = jwt.decode(token, ec_key.public_key(), algorithms=["ES256"], audience="x", options={"verify_exp": False})
    assert decoded == claims
    with pytest.raises(TypeError):
        JWSSigner("ES256", rsa_key)


def test_issuer_keys_sign_as_before():
    key = issuer.load_issuer_key(issuer.generate_issuer_key_pem("RS256"))
    claims = {"sub": "alice", "iat": IAT}
    assert key.sign(claims) == jwt.encode(claims, key.private_key, "RS256", headers={"kid": key.kid, "typ": "JWT"})
    assert jwt.get_unverified_header(key.sign(claims, typ="at+jwt"))["typ"] == "at+jwt"


def test_macaroons_are_pymacaroons_bytes():
    secret = b"s" * 32
    caveats = ["name:bob@cern.ch", "activity:DOWNLOAD,READ_METADATA,LIST", "path:/store/user/bob~", "before:x"]
    reference = Macaroon(location="CASA_TEST", identifier="id-1", key=secret)
    for caveat in caveats:
        reference.add_first_party_caveat(caveat)
    ours = xcache.serialize_macaroon_v1("CASA_TEST", "id-1", xcache.derive_macaroon_key(secret), caveats)
    assert ours.decode() == reference.serialize()


def test_dask_certificates_are_the_builders_bytes():
    from casa_hub.credentials import dask_tls

    secret = b"d" * 48
    for user in ("alice", "bob@cern.ch", "dörte", "x" * 200):
        for generation in (0, 7):
            ca = dask_tls.user_ca(secret, user, generation)
            assert ca.cert_pem == dask_tls.ca_certificate(
                dask_tls.derive_ca_key(secret, user, generation), user, generation
            )
            leaves = dask_tls.LeafIssuer(ca, user, ["localhost", "127.0.0.1", "::1", "dask-x.example.org"])
            for role in dask_tls.ROLES:
                key = ec.generate_private_key(ec.SECP256R1())
                leaf = leaves.issue(role, NOW, datetime.timedelta(hours=1), key=key, serial=2**158 + 12345)
                not_before, not_after = dask_tls._leaf_times(ca, NOW, datetime.timedelta(hours=1))
                reference = dask_tls._leaf_builder(
                    ca=ca,
                    user=user,
                    role=role,
                    hostnames=leaves.hostnames if role != "client" else (),
                    public_key=key.public_key(),
                    serial=2**158 + 12345,
                    not_before=not_before,
                    not_after=not_after,
                ).sign(ca.key, hashes.SHA256())
                from cryptography import x509

                cert = x509.load_pem_x509_certificate(leaf.cert_pem)
                assert cert.tbs_certificate_bytes == reference.tbs_certificate_bytes, (user, role)
                ca.key.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
                assert leaf.key_pem == key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )


def test_the_manifest_is_the_json_of_its_entries():
    entry = layout.ManifestEntry(
        "x", 'X "quoted" ü', "x/y", "X_FILE", audience=("a", "b"), scopes=("s",), extra={"k": 1}
    )
    text = layout.manifest_bytes("ü@x", NOW, [(entry, NOW), (layout.ManifestEntry("n", "N", "n"), None)])
    assert json.loads(text) == {
        "user": "ü@x",
        "issued_at": NOW.isoformat(),
        "credentials": {
            "x": {
                "name": "x",
                "label": 'X "quoted" ü',
                "file": "x/y",
                "env": "X_FILE",
                "audience": ["a", "b"],
                "scopes": ["s"],
                "k": 1,
                "expires_at": NOW.isoformat(),
            },
            "n": {"name": "n", "label": "N", "file": "n", "env": None, "expires_at": None},
        },
    }
    parsed = layout.parse_manifest(text)
    assert parsed.entries["x"] == entry and parsed.expires_at == {"x": NOW, "n": None}


def test_no_kind_depends_on_another():
    """Each built-in kind module imports the pure crypto modules, the interface and the layout: never another
    kind module."""
    import ast
    from pathlib import Path

    kinds_dir = Path(__file__).resolve().parents[2] / "casa_hub" / "credentials" / "kinds"
    for path in kinds_dir.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:  # "from .x import" = the kinds package
                assert node.module == "per_user", (path.name, node.module)
    assert issubclass(XCacheToken, CredentialKind)

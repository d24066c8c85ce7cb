"""Per-user storage directories (``{userdir}``) and the storage path templates of the XCache kinds.

XRootD 5.5 matches SciTokens scope paths and macaroon ``path:`` caveats as plain string prefixes, so the
directory names must be injective *and* prefix-free; the real-server half of this is
tests/consumers/test_storage_isolation.py.
"""

from __future__ import annotations

import itertools
import re
import urllib.parse

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from traitlets import TraitError
from traitlets.config import Config

from casa_hub.credentials import storage
from casa_hub.credentials.kinds.xcache_macaroon import XCacheMacaroon
from casa_hub.credentials.kinds.xcache_token import XCacheToken
from casa_hub.credentials.storage import user_dir
from casa_hub.minter import CasaMinter
from tests.support import make_minter
from tests.user_names import HOSTILE_PAIRS, pair_id

NORMAL = re.compile(r"^(?:[a-z0-9._-]|=[0-9a-f]{2})*~$")
HASHED = re.compile(r"^((?:[a-z0-9._-]|=[0-9a-f]{2})*)==([0-9a-f]{32})~$")

# valid hub user names: lower case, no '/', no control, space or surrogate characters
_name_chars = st.characters(
    blacklist_categories=("Cc", "Cs", "Co", "Cn", "Zs", "Zl", "Zp", "Lu", "Lt"), blacklist_characters="/"
)
valid_names = st.text(_name_chars, min_size=1, max_size=150).filter(lambda s: s == s.lower())
# names made of the characters that escaping, the terminator and the hash form play with: near-collisions
tricky_names = st.text(st.sampled_from("ali~=7e.-_%2f@ä用x"), min_size=1, max_size=70)
names = st.one_of(valid_names, tricky_names)


def decode(directory: str) -> str:
    """Inverse of user_dir for names that were not shortened (proves injectivity of the normal form)."""
    assert NORMAL.match(directory), directory
    out, body, i = bytearray(), directory[:-1], 0
    while i < len(body):
        if body[i] == "=":
            out.append(int(body[i + 1 : i + 3], 16))
            i += 3
        else:
            out += body[i].encode()
            i += 1
    return out.decode("utf-8")


def assert_distinct_and_prefix_free(a: str, b: str) -> None:
    da, db = user_dir(a), user_dir(b)
    assert da != db, (a, b, da)
    assert not db.startswith(da) and not da.startswith(db), (a, b, da, db)


# ---------------------------------------------------------------- user_dir


def test_examples():
    assert user_dir("alice") == "alice~"
    assert user_dir("alice.smith@cern.ch") == "alice.smith=40cern.ch~"
    assert user_dir("ali~") == "ali=7e~"
    assert user_dir(".alice") == "=2ealice~"
    assert user_dir("alice.") == "alice.~"
    assert user_dir("a%2fb") == "a=252fb~"
    assert user_dir("dörte") == "d=c3=b6rte~"
    assert user_dir("Alice") == "=41lice~"  # hub names are lower case; upper case would still not survive
    with pytest.raises(ValueError):
        user_dir("")


@given(names)
@settings(max_examples=400, deadline=None)
def test_alphabet_terminator_and_round_trip(name):
    d = user_dir(name)
    assert re.fullmatch(r"[a-z0-9._=~-]+", d), d
    assert d.endswith("~") and d.count("~") == 1  # ~ only as terminator: no dir is a prefix of another
    assert not d.startswith(".") and "%" not in d and "/" not in d
    assert len(d) <= 121
    if HASHED.match(d) is None:
        assert decode(d) == name


@given(st.lists(names, min_size=2, max_size=8, unique=True))
@settings(max_examples=300, deadline=None)
def test_injective_and_prefix_free(batch):
    for a, b in itertools.combinations(batch, 2):
        assert_distinct_and_prefix_free(a, b)


@given(names, names)
@settings(max_examples=300, deadline=None)
def test_injective_and_prefix_free_pairs(a, b):
    if a != b:
        assert_distinct_and_prefix_free(a, b)
    # a user name that extends another (ali / alice) is the case XRootD's prefix matching gets wrong
    if a + b != a:
        assert_distinct_and_prefix_free(a, a + b)


@pytest.mark.parametrize("pair", HOSTILE_PAIRS, ids=pair_id)
def test_hostile_pairs(pair):
    first, second, _ = pair
    assert_distinct_and_prefix_free(first, second)


def test_long_names_are_shortened_with_a_hash():
    assert user_dir("a" * 120) == "a" * 120 + "~"  # the escaped form may be 120 long
    d = user_dir("a" * 121)
    m = HASHED.match(d)
    assert m and m.group(1) == "a" * 80, d
    assert len(d) == 80 + 2 + 32 + 1
    # the head never cuts inside an =xx escape: 26 x 3 = 78 characters fit, a 27th escape would not
    m = HASHED.match(user_dir("é" * 61))
    assert m and m.group(1) == "=c3=a9" * 13, m  # each é is two escapes (=c3=a9, 6 characters)
    assert HASHED.match(user_dir("~" * 41)).group(1) == "=7e" * 26
    # distinct long names stay distinct and prefix-free, the same name maps to the same directory
    assert user_dir("x" * 300) == user_dir("x" * 300)
    assert_distinct_and_prefix_free("x" * 300, "x" * 301)


@given(st.text(_name_chars, min_size=41, max_size=400).filter(lambda s: s == s.lower()))
@settings(max_examples=200, deadline=None)
def test_long_form_shape(name):
    d, escaped = user_dir(name), "".join(storage._escape_units(name))
    m = HASHED.match(d)
    if len(escaped) > 120:
        assert m and len(m.group(1)) <= 80 and escaped.startswith(m.group(1)), (name, d)
        assert len(m.group(1)) >= 78  # as long as the 3-character escapes allow
    else:
        assert m is None and d == escaped + "~"


def test_cli_prints_the_directory(capsys):
    assert storage.main(["alice", "ali~"]) == 0
    assert capsys.readouterr().out.splitlines() == ["alice~", "ali=7e~"]


# ---------------------------------------------------------------- templates

SAFE_SCOPES = [
    ["storage.read:/store"],
    ["storage.read:/store", "storage.create:/store/user/{userdir}"],
    ["storage.read:/store/public", "storage.read:/store/user/{userdir}", "storage.create:/store/user/{userdir}"],
    ["storage.modify:/store/user/{userdir}/out", "storage.stage:/tape/{userdir}"],
    ["read:/store", "write:/store/user/{userdir}"],
    ["openid", "offline_access", "storage.read:/"],
    ["storage.create:/store/scratch", "storage.create:/store/user/{userdir}"],  # a sibling shared area is fine
]


@pytest.mark.parametrize("scopes", SAFE_SCOPES, ids=str)
def test_safe_scopes_are_accepted(scopes):
    storage.check_scopes(scopes)
    assert XCacheToken(scopes=scopes).scopes == scopes


def test_a_token_without_scopes_is_refused_at_configuration():
    storage.check_scopes([])  # nothing unsafe in it, but a storage token without a scope grants nothing
    with pytest.raises(TraitError, match=r"^XCacheToken\.scopes: a storage token needs at least one scope"):
        XCacheToken(scopes=[])


# (scopes, what the message must say)
UNSAFE_SCOPES = [
    (["storage.create:/store/user/{username}"], r"use \{userdir\}, not \{username\}.*plain string prefixes"),
    (["storage.create:/store/user/{userdir!r}"], r"\{userdir!r\} is not allowed"),
    (["storage.create:/store/user/{userdir!s}"], r"\{userdir!s\} is not allowed"),
    (["storage.create:/store/user/{userdir.upper}"], r"\{userdir.upper\} is not allowed"),
    (["storage.create:/store/user/{userdir[0]}"], r"\{userdir\[0\]\} is not allowed"),
    (["storage.create:/store/user/{userdir:>9}"], r"\{userdir:>9\} is not allowed"),
    (["storage.create:/store/user/{0}"], r"\{0\} is not allowed"),
    (["storage.create:/store/user/{}"], r"\{\} is not allowed"),
    (["storage.create:/store/user/{home}"], r"\{home\} is not allowed"),
    (["storage.create:/store/user/{userdir"], r"not a valid template"),
    (["storage.create:/store/user/{{userdir}}"], r"literal braces"),
    (["storage.create:store/user/{userdir}"], r"must be absolute"),
    (["storage.create:{userdir}"], r"must be absolute"),
    (["storage.create:"], r"must be absolute"),
    (["storage.create:/store//user/{userdir}"], r"'//'"),
    (["storage.create:/store/user/{userdir}/"], r"may not end with '/'"),
    (["storage.create:/store/user/"], r"may not end with '/'"),
    (["storage.create:/store/./user/{userdir}"], r"'\.' or '\.\.'"),
    (["storage.create:/store/user/{userdir}/.."], r"'\.' or '\.\.'"),
    (["storage.create:/store/user/%7e{userdir}"], r"'%'"),
    (["storage.create:/store/user/u-{userdir}"], r"whole path component"),
    (["storage.create:/store/user/{userdir}-x"], r"whole path component"),
    (["storage.create:/store/user/{userdir}{userdir}"], r"whole path component"),
    (["storage.read:/store storage.create:/"], r"one scope per entry"),
    (["openid{userdir}"], r"only allowed in the path of a storage scope"),
    (["scope:{username}"], r"use \{userdir\}"),
    # a static write scope covering the per-user areas: every user writes everyone's area
    (["storage.create:/store/user", "storage.create:/store/user/{userdir}"], r"write access to every user's area"),
    (["storage.create:/store", "storage.create:/store/user/{userdir}"], r"write access to every user's area"),
    (["storage.modify:/", "storage.read:/store/user/{userdir}"], r"write access to every user's area"),
    (["write:/store/us", "write:/store/user/{userdir}"], r"write access to every user's area"),
    # a static scope inside the per-user areas covers some user's directory (user "public" -> public~)
    (["storage.read:/store/user/public", "storage.create:/store/user/{userdir}"], r"lies inside the per-user areas"),
    (["storage.create:/store/public", "storage.create:/store/{userdir}"], r"lies inside the per-user areas"),
]


@pytest.mark.parametrize(("scopes", "message"), UNSAFE_SCOPES, ids=[str(s) for s, _ in UNSAFE_SCOPES])
def test_unsafe_scopes_are_refused_naming_the_trait(scopes, message):
    with pytest.raises(ValueError, match=message):
        storage.check_scopes(scopes)
    with pytest.raises(TraitError, match=r"^XCacheToken\.scopes: .*" + message):
        XCacheToken(scopes=scopes)


def test_unsafe_scopes_fail_config_load(tmp_path):
    c = Config()
    c.XCacheToken.scopes = ["storage.read:/store", "storage.create:/store/user/{username}"]
    with pytest.raises(RuntimeError, match=r"^XCacheToken\.scopes: .*\{userdir\}"):  # at hub start
        CasaMinter(config=c).load_keys()
    m = XCacheToken()
    with pytest.raises(TraitError, match=r"^XCacheToken\.scopes"):
        m.scopes = ["storage.create:/store/user/{userdir}/"]
    assert m.scopes == ["storage.read:/store"]  # unchanged


@pytest.mark.parametrize("path", ["/store", "/", "/store/user/{userdir}", "/store/{userdir}/public"])
def test_safe_macaroon_paths_are_accepted(path):
    assert XCacheMacaroon(path=path).path == path


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/store/user/{username}", r"use \{userdir\}"),
        ("/store/user/{userdir}/", r"may not end with '/'"),
        ("/store/user/x{userdir}", r"whole path component"),
        ("store/{userdir}", r"must be absolute"),
        ("/store/../{userdir}", r"'\.' or '\.\.'"),
        ("/store/%2e/{userdir}", r"'%'"),
        ("/store/user/{userdir!r}", r"is not allowed"),
    ],
)
def test_unsafe_macaroon_paths_are_refused_naming_the_trait(path, message):
    with pytest.raises(TraitError, match=r"^XCacheMacaroon\.path: .*" + message):
        XCacheMacaroon(path=path)


# ---------------------------------------------------------------- minting


def _scope(bundle) -> list[str]:
    claims = jwt.decode(bundle.files["xcache.token"].content.strip(), options={"verify_signature": False})
    return claims["scope"].split(" ")


def test_mint_renders_userdir_and_exports_the_storage_area(tmp_path):
    m = make_minter(
        tmp_path,
        XCacheToken={
            "scopes": [
                "storage.read:/store/public",
                "storage.create:/store/user/{userdir}",
                "storage.read:/store/user/{userdir}",
            ]
        },
        XCacheMacaroon={"path": "/store/user/{userdir}"},
    )
    b = m.mint("ali")
    assert _scope(b) == [
        "storage.read:/store/public",
        "storage.create:/store/user/ali~",
        "storage.read:/store/user/ali~",
    ]
    assert b.env["CASA_STORAGE_AREA"] == "/store/user/ali~"
    assert b"path:/store/user/ali~" in _macaroon_caveats(b)
    b = m.mint("ali~")
    assert _scope(b)[1] == "storage.create:/store/user/ali=7e~"
    assert b.env["CASA_STORAGE_AREA"] == "/store/user/ali=7e~"
    assert b.env_for("/mnt")["CASA_STORAGE_AREA"] == "/store/user/ali=7e~"  # not a path inside the bundle


def test_no_storage_area_without_a_per_user_scope(tmp_path):
    b = make_minter(tmp_path).mint("alice")
    assert _scope(b) == ["storage.read:/store"]
    assert "CASA_STORAGE_AREA" not in b.env


def test_storage_area_from_the_macaroon_path_when_tokens_are_off(tmp_path):
    b = make_minter(tmp_path, kinds=("macaroon", "dask-tls"), XCacheMacaroon={"path": "/store/user/{userdir}"}).mint(
        "bob@cern.ch"
    )
    assert b.env["CASA_STORAGE_AREA"] == "/store/user/bob=40cern.ch~"


@pytest.mark.parametrize("pair", HOSTILE_PAIRS, ids=pair_id)
def test_minted_scopes_of_hostile_pairs_are_not_prefixes(tmp_path, pair):
    m = make_minter(
        tmp_path,
        XCacheToken={"scopes": ["storage.create:/store/user/{userdir}"]},
        XCacheMacaroon={"path": "/store/user/{userdir}"},
    )
    first, second, _ = pair
    a, b = m.mint(first), m.mint(second)
    pa, pb = _scope(a)[0].split(":", 1)[1], _scope(b)[0].split(":", 1)[1]
    # what XRootD 5.5 does with them: strip a trailing '/', then a plain string prefix match
    assert not (pb + "/").startswith(pa.rstrip("/")) and not (pa + "/").startswith(pb.rstrip("/"))
    assert a.env["CASA_STORAGE_AREA"] == pa and b.env["CASA_STORAGE_AREA"] == pb


def _macaroon_caveats(bundle) -> bytes:
    from pymacaroons import Macaroon

    mac = Macaroon.deserialize(bundle.files["xcache.macaroon"].content.decode().strip())
    return b"\n".join(c.caveat_id_bytes for c in mac.caveats)


# ---------------------------------------------------------------- the facility's XCache: CASA_XCACHE_URL

GOOD_CACHE_URLS = [
    "root://xcache.example.org:1094",
    "root://xcache.example.org",
    "roots://xcache.example.org:1094",
    "https://xcache.example.org:8443",
    "davs://xcache.example.org",
    "root://10.0.0.7:1094",
    "root://[2001:db8::7]:1094",
    "root://xcache.example.org.:1094",
]


@pytest.mark.parametrize("url", GOOD_CACHE_URLS)
def test_cache_url_is_put_in_the_environment(tmp_path, url):
    b = make_minter(tmp_path, XCacheToken={"cache_url": url}).mint("alice")
    assert b.env["CASA_XCACHE_URL"] == url
    assert b.env_for("/mnt")["CASA_XCACHE_URL"] == url  # not a path inside the bundle
    # what a notebook does with it: a URL on the cache host, the path after XRootD's '//'
    parts = urllib.parse.urlsplit(f"{b.env['CASA_XCACHE_URL']}//store/data/run1.root")
    assert (parts.scheme, parts.path) == (url.split(":")[0], "//store/data/run1.root")
    assert f"{parts.scheme}://{parts.netloc}" == url


def test_no_cache_url_by_default(tmp_path):
    assert XCacheToken().cache_url == ""
    assert "CASA_XCACHE_URL" not in make_minter(tmp_path).mint("alice").env


def test_cache_url_is_owned_by_the_token_kind():
    assert "CASA_XCACHE_URL" in XCacheToken().env_names()


def test_a_changed_cache_url_takes_effect_at_once(tmp_path):
    m = make_minter(tmp_path, XCacheToken={"cache_url": "root://old.example.org"})
    assert m.mint("alice").env["CASA_XCACHE_URL"] == "root://old.example.org"
    m.kind("xcache").cache_url = "root://new.example.org:1094"
    assert m.mint("alice").env["CASA_XCACHE_URL"] == "root://new.example.org:1094"
    m.kind("xcache").cache_url = ""
    assert "CASA_XCACHE_URL" not in m.mint("alice").env


# (URL, what the message must say)
BAD_CACHE_URLS = [
    ("xcache.example.org:1094", r"must start with one of root://, roots://, https://, davs://"),
    ("http://xcache.example.org", r"must start with one of"),
    ("file:///store", r"must start with one of"),
    ("ROOT://xcache.example.org", r"must start with one of"),
    ("root:/xcache.example.org", r"must start with one of"),
    ("root://", r"no host"),
    ("root://:1094", r"no host"),
    ("root://xcache.example.org/", r"no path \(not even a trailing /\)"),
    ("root://xcache.example.org:1094//store", r"no path"),
    ("root://xcache.example.org/store/user", r"no path"),
    ("https://xcache.example.org?authz=x", r"query"),
    ("https://xcache.example.org?", r"query"),
    ("https://xcache.example.org#top", r"fragment"),
    ("root://alice:hunter2@xcache.example.org", r"no user or password"),
    ("root://alice@xcache.example.org", r"no user or password"),
    ("root://xcache.example.org:0", r"bad port"),
    ("root://xcache.example.org:", r"bad port"),
    ("root://xcache.example.org:65536", r"bad port"),
    ("root://xcache.example.org:root", r"bad port"),
    ("root://xcache_1.example.org", r"not a host name"),
    ("root://-xcache.example.org", r"not a host name"),
    ("root://[not-ipv6]", r"IPv"),
    ("root://[2001:db8::7", r"IPv6"),
    ("root://xcache.example.org :1094", r"white space"),
    ("root://xcache.example.org\n", r"white space"),
    (" root://xcache.example.org", r"white space"),
]


@pytest.mark.parametrize(("url", "message"), BAD_CACHE_URLS, ids=[u for u, _ in BAD_CACHE_URLS])
def test_bad_cache_url_is_refused_naming_the_trait(url, message):
    with pytest.raises(TraitError, match=r"^XCacheToken\.cache_url: .*" + message) as refused:
        XCacheToken(cache_url=url)
    assert "hunter2" not in str(refused.value)  # a password in the URL stays out of the log


def test_bad_cache_url_fails_config_load():
    c = Config()
    c.XCacheToken.cache_url = "root://xcache.example.org/store"
    with pytest.raises(RuntimeError, match=r"^XCacheToken\.cache_url: .*no path"):  # at hub start
        CasaMinter(config=c).load_keys()
    m = XCacheToken(cache_url="root://xcache.example.org")
    with pytest.raises(TraitError, match=r"^XCacheToken\.cache_url"):
        m.cache_url = "root://xcache.example.org/"
    assert m.cache_url == "root://xcache.example.org"  # unchanged

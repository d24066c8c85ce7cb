"""condor_user: the HTCondor / POSIX account a hub user's IDTOKEN names (issue 10, class 5).

HTCondor splits a token's ``sub`` at its first ``@`` and runs jobs as that local account (tests of the real pool:
tests/consumers/test_htcondor_isolation.py); here the mapping itself: injective, POSIX portable, no ``@``."""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import unicodedata

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from traitlets import TraitError

from casa_hub.credentials import htcondor
from casa_hub.credentials.htcondor import condor_user
from casa_hub.credentials.kinds.htcondor import TOKEN_FILE as CONDOR_TOKEN
from casa_hub.credentials.kinds.htcondor import HTCondorToken
from casa_hub.credentials.layout import MANIFEST
from tests.support import make_minter
from tests.user_names import HOSTILE_PAIRS

POSIX = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
NOW = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.timezone.utc)
HOUR = datetime.timedelta(hours=1)

# names shaped like what providers hand out and attackers pick (lower case, no '/', no spaces or controls)
hub_names = st.one_of(
    st.from_regex(r"[a-z0-9_.@~%=+-]{1,40}", fullmatch=True),
    st.from_regex(r"[a-z_][a-z0-9_-]{0,31}", fullmatch=True),  # already account names
    st.text(
        st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), blacklist_characters="/"),
        min_size=1,
        max_size=80,
    )
    .map(lambda s: unicodedata.normalize("NFC", s.lower()))
    .filter(bool),
)


def _valid_account(account: str) -> None:
    assert POSIX.match(account), account
    assert "@" not in account and len(account) <= 32


def _all_pair_names() -> list[str]:
    return sorted({n for a, b, _ in HOSTILE_PAIRS for n in (a, b)})


@pytest.mark.parametrize(
    "name", ["alice", "bob", "alice_smith", "alice-smith", "_svc", "a" * 32, "ali2", "x-", "user-1"]
)
def test_account_names_are_kept(name):
    assert condor_user(name) == name


@pytest.mark.parametrize(
    "name,prefix",
    [
        ("bob@x", "bob-x"),
        ("bob@cern.ch", "bob-cern-ch"),
        ("alice.smith", "alice-smith"),
        ("1", "_1"),
        ("12", "_12"),
        ("用户", "_"),
        ("dörte", "d-rte"),
        ("a" * 33, "a" * 14),
        (".alice", "alice"),
        ("alice--x", "alice-x"),
        ("Alice", "alice"),
        ("a%2fb", "a-2fb"),
    ],
)
def test_other_names_get_a_readable_prefix_and_a_hash(name, prefix):
    expected = f"{prefix}--{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    assert condor_user(name) == expected
    _valid_account(expected)


def test_email_like_name_never_becomes_the_local_part():
    for first, second in [("bob", "bob@x"), ("bob", "bob@cern.ch")]:
        assert condor_user(second) != condor_user(first) == first
        assert not condor_user(second).startswith(first + "@")


@pytest.mark.parametrize("pair", HOSTILE_PAIRS, ids=[f"{a[:12]!r}-{b[:12]!r}" for a, b, _ in HOSTILE_PAIRS])
def test_hostile_pairs_map_to_distinct_valid_accounts(pair):
    first, second, _ = pair
    a, b = condor_user(first), condor_user(second)
    _valid_account(a)
    _valid_account(b)
    assert a != b


def test_all_hostile_names_are_pairwise_distinct():
    names = _all_pair_names()
    assert len({condor_user(n) for n in names}) == len(names)


@settings(max_examples=300, deadline=None)
@given(name=hub_names)
def test_every_name_maps_to_a_valid_account(name):
    account = condor_user(name)
    _valid_account(account)
    kept = bool(POSIX.match(name)) and "--" not in name
    assert (account == name) is kept
    assert ("--" in account) is not kept  # the two ranges never meet
    assert condor_user(name) == account  # pure


@settings(max_examples=200, deadline=None)
@given(names=st.lists(hub_names, min_size=2, max_size=30, unique=True))
def test_injective(names):
    accounts = [condor_user(n) for n in names]
    assert len(set(accounts)) == len(names)


@settings(max_examples=200, deadline=None)
@given(name=hub_names)
def test_choosing_another_users_account_as_a_name_does_not_yield_it(name):
    """Whoever registers the hub name ``condor_user(victim)`` gets another account, not the victim's."""
    account = condor_user(name)
    if account != name:
        assert condor_user(account) != account


def test_empty_name_is_refused():
    with pytest.raises(ValueError):
        condor_user("")


def test_cli_prints_the_accounts(capsys):
    assert htcondor.main(["alice", "bob@cern.ch"]) == 0
    assert capsys.readouterr().out.splitlines() == ["alice", condor_user("bob@cern.ch")]


# ---------------------------------------------------------------- the token and the bundle


def test_token_subject_is_the_account_at_the_trust_domain():
    token, _ = htcondor.mint_idtoken(
        signing_key=b"s" * 32, key_id="POOL", trust_domain="pool.example", user="bob@x", now=NOW, lifetime=HOUR
    )
    claims = jwt.decode(
        token.strip(), b"s" * 32, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False}
    )
    assert claims["sub"] == f"{condor_user('bob@x')}@pool.example"
    assert claims["sub"].split("@", 1)[0] != "bob"  # HTCondor's Owner: the part before the first "@"


@pytest.mark.parametrize("domain", ["a@b", "pool example", "pool.example\n", "@"])
def test_trust_domain_with_at_or_space_is_refused(domain, tmp_path):
    with pytest.raises(ValueError, match="trust domain"):
        htcondor.idtoken_claims(trust_domain=domain, user="alice", now=NOW, lifetime=HOUR)
    with pytest.raises(TraitError, match=r"^HTCondorToken\.trust_domain=.*cannot contain '@' or white space"):
        HTCondorToken(trust_domain=domain)
    with pytest.raises(RuntimeError, match=r"^HTCondorToken\.trust_domain="):  # at hub start
        make_minter(tmp_path, HTCondorToken={"trust_domain": domain})


def test_bundle_names_the_account(tmp_path):
    minter = make_minter(tmp_path)
    bundle = minter.mint("bob@cern.ch")
    account = condor_user("bob@cern.ch")
    assert bundle.env["CASA_CONDOR_USER"] == account
    manifest = json.loads(bundle.files[MANIFEST].content)
    assert manifest["user"] == "bob@cern.ch"
    assert manifest["credentials"]["htcondor"]["user"] == account
    assert manifest["credentials"]["htcondor"]["file"] == CONDOR_TOKEN
    claims = jwt.decode(bundle.files[CONDOR_TOKEN].content.strip(), options={"verify_signature": False})
    assert claims["sub"] == f"{account}@casa.test"
    # kept names stay readable
    assert minter.mint("alice").env["CASA_CONDOR_USER"] == "alice"


def test_no_condor_account_without_condor(tmp_path):
    bundle = make_minter(tmp_path, kinds=("xcache", "macaroon", "servicex", "dask-tls")).mint("alice")
    assert "CASA_CONDOR_USER" not in bundle.env


@pytest.mark.parametrize("name", ["root", "condor", "nobody"])
def test_system_accounts_are_never_a_hub_users_account(name):
    from casa_hub.credentials.htcondor import condor_user

    mapped = condor_user(name)
    assert mapped != name and "--" in mapped and mapped.startswith(name)

"""``casa-hub-keys`` and the pure revocation list / HTCondor revocation configuration (casa_hub/keys.py,
casa_hub/revocation.py). What the real pool does with that configuration: tests/consumers/test_revocation.py."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys

import pytest

from casa_hub import keys, revocation
from casa_hub.credentials.htcondor import condor_user, signing_key_from_file
from casa_hub.credentials.issuer import load_issuer_key
from tests.support import REPO
from tests.user_names import HOSTILE_PAIRS, pair_id

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 11, 3, 10, 0, 0, 500000, tzinfo=UTC)


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "casa_hub.keys", *args], capture_output=True, text=True, cwd=cwd or REPO, timeout=60
    )


# ====================================================================================== KIND > FILE (unchanged)
@pytest.mark.parametrize("kind", keys.KINDS)
def test_kind_alone_still_prints_a_new_secret(kind):
    a = subprocess.run([sys.executable, "-m", "casa_hub.keys", kind], capture_output=True, timeout=60, cwd=REPO)
    b = subprocess.run([sys.executable, "-m", "casa_hub.keys", kind], capture_output=True, timeout=60, cwd=REPO)
    assert a.returncode == b.returncode == 0 and a.stdout and a.stdout != b.stdout
    if kind == "issuer":
        load_issuer_key(a.stdout)
    if kind == "condor":
        assert len(signing_key_from_file(a.stdout, "POOL2")) == 32


def test_unknown_kind_is_refused_with_the_choices():
    r = run("rsa")
    assert r.returncode == 2 and "invalid choice: 'rsa'" in r.stderr and "issuer" in r.stderr
    with pytest.raises(ValueError, match="unknown key kind 'rsa'"):
        keys.generate("rsa")


# ====================================================================================== rotate
def test_rotate_issuer_prints_the_three_steps_with_exact_config():
    r = run("rotate", "issuer", "--current", "issuer.pem", "--next", "issuer-2.pem", "--retired", "issuer-0.pem")
    assert r.returncode == 0, r.stderr
    step1, step2, step3 = r.stdout.split("\n1. ")[1].split("\n2. ")[0], *r.stdout.split("\n2. ")[1].split("\n3. ")
    assert "issuer_key_file: /etc/casa-hub/keys/issuer.pem" in step1
    assert "issuer_retired_key_files: [/etc/casa-hub/keys/issuer-2.pem, /etc/casa-hub/keys/issuer-0.pem]" in step1
    assert "at least 600 s after step 1" in step2
    assert "issuer_key_file: /etc/casa-hub/keys/issuer-2.pem" in step2
    assert "issuer_retired_key_files: [/etc/casa-hub/keys/issuer.pem, /etc/casa-hub/keys/issuer-0.pem]" in step2
    assert "at least 3600 s after step 2" in step3
    assert "issuer_retired_key_files: [/etc/casa-hub/keys/issuer-0.pem]" in step3
    assert not list(REPO.glob("issuer-2.pem"))  # without --write nothing is written


def test_rotate_write_makes_the_new_key_once_and_never_overwrites(tmp_path):
    r = run("rotate", "issuer", "--write", "--dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    new = tmp_path / "issuer-2.pem"
    assert new.stat().st_mode & 0o777 == 0o600
    first = new.read_bytes()
    load_issuer_key(first)
    again = run("rotate", "issuer", "--write", "--dir", str(tmp_path))
    assert again.returncode == 2 and "exists" in again.stderr and "nothing was written" in again.stderr
    assert new.read_bytes() == first
    r = run("rotate", "condor", "--key-id", "POOL3", "--write", "--dir", str(tmp_path))
    assert r.returncode == 0 and "key_id: POOL3" in r.stdout
    assert "signing_key_file: /etc/casa-hub/keys/POOL3" in r.stdout
    assert len(signing_key_from_file((tmp_path / "POOL3").read_bytes(), "POOL3")) == 32


def test_rotate_condor_servicex_macaroon_and_dask_ca_name_the_settings():
    condor = run("rotate", "condor", "--lifetime", "3600").stdout
    assert "HTCondorToken:" in condor and "key_id: POOL2" in condor and "at least 3600 s after step 2" in condor
    servicex = run("rotate", "servicex").stdout
    assert "ServiceXToken:\n         secret_file: /etc/casa-hub/keys/servicex-2.secret" in servicex
    assert (
        "XCacheMacaroon:\n         secret_file: /x/m.secret"
        in run("rotate", "macaroon", "--mount", "/x", "--next", "m.secret").stdout
    )
    bump = run("rotate", "dask-ca", "--generation", "4").stdout
    assert "ca_generation: 5" in bump and "ca_secret_file" not in bump
    new = run("rotate", "dask-ca", "--generation", "0", "--new-secret", "--next", "dask-ca-2.secret").stdout
    assert "ca_generation: 1" in new and "ca_secret_file: /etc/casa-hub/keys/dask-ca-2.secret" in new


@pytest.mark.parametrize(
    "args, message",
    [
        (["rotate", "dask-ca", "--generation", "x"], "--generation expects a whole number >= 0, got 'x'"),
        (["rotate", "dask-ca", "--generation", "-1"], "--generation expects a whole number >= 0, got -1"),
        (["rotate", "dask-ca"], "the following arguments are required: --generation"),
        (["rotate", "dask-ca", "--generation", "1", "--new-secret"], "--new-secret needs --next FILE"),
        (["rotate", "dask-ca", "--generation", "1", "--write"], "a generation bump has no new file"),
        (["rotate", "issuer", "--lifetime", "6h"], "--lifetime expects a whole number of seconds, got '6h'"),
        (["rotate", "issuer", "--lifetime", "0"], "--lifetime expects a positive number of seconds, got 0"),
        (["rotate", "issuer", "--next", "../x.pem"], "expected a file name (no directory), got '../x.pem'"),
        (["rotate", "issuer", "--next", "issuer.pem"], "--next 'issuer.pem' is already in use"),
        (["rotate", "condor", "--key-id", "POOL 2"], "--key-id expects letters, digits, _ and - only"),
        (["rotate", "condor", "--key-id", "POOL"], "--key-id 'POOL' must differ from --old-key-id"),
        (["rotate", "rsa"], "invalid choice: 'rsa'"),
        (["condor-revocations", "/nonexistent/revoked.json"], "cannot read the revocation list"),
        (["condor-revocations", "x", "--prune-after", "six"], "--prune-after expects a whole number of seconds"),
    ],
)
def test_bad_input_gets_a_clear_error_and_exit_status_2(args, message):
    r = run(*args)
    assert r.returncode == 2, r
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


# ====================================================================================== revocation list file
def test_revocation_list_round_trips_and_keeps_the_latest_time_per_user():
    later = T0 + datetime.timedelta(hours=1)
    text = revocation.dumps(
        [revocation.Revocation("bob", T0), revocation.Revocation("alice", later), revocation.Revocation("alice", T0)]
    )
    doc = json.loads(text)
    assert doc == {
        "casa_revocations": 1,
        "revoked": [
            {"user": "alice", "revoked_at": "2026-11-03T11:00:00.500000+00:00"},
            {"user": "bob", "revoked_at": "2026-11-03T10:00:00.500000+00:00"},
        ],
    }
    assert revocation.loads(text) == [revocation.Revocation("alice", later), revocation.Revocation("bob", T0)]


@pytest.mark.parametrize(
    "text, message",
    [
        ("not json", "not a JSON document"),
        ("[]", '"casa_revocations": 1'),
        ('{"casa_revocations": 2, "revoked": []}', '"casa_revocations": 1'),
        ('{"casa_revocations": 1}', '"revoked" must be a list'),
        ('{"casa_revocations": 1, "revoked": ["alice"]}', "revoked[0]: expected"),
        ('{"casa_revocations": 1, "revoked": [{"user": "", "revoked_at": "x"}]}', 'revoked[0]: "user"'),
        ('{"casa_revocations": 1, "revoked": [{"user": "a", "revoked_at": 5}]}', '"revoked_at" must be an ISO 8601'),
        ('{"casa_revocations": 1, "revoked": [{"user": "a", "revoked_at": "soon"}]}', "'soon' is not an ISO 8601"),
        (
            '{"casa_revocations": 1, "revoked": [{"user": "a", "revoked_at": "2026-11-03T10:00:00"}]}',
            "has no UTC offset",
        ),
    ],
)
def test_a_bad_revocation_list_is_refused_naming_what_and_where(text, message, tmp_path):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        revocation.loads(text)
    f = tmp_path / "revoked.json"
    f.write_text(text)
    r = run("condor-revocations", str(f))
    assert r.returncode == 2 and "is not a Casa revocation list" in r.stderr and r.stdout == ""


# ====================================================================================== the pool configuration
def test_no_revocations_revoke_nothing():
    config = revocation.condor_revocation_config([])
    assert "CASA_REVOKED_IDTOKENS = false\n" in config
    assert config.endswith("SEC_TOKEN_REVOCATION_EXPR = $(CASA_REVOKED_IDTOKENS)\n")


def test_the_expression_names_subject_and_whole_second_of_each_revocation():
    assert revocation.condor_revocation_expr(
        [revocation.Revocation("bob@x", T0), revocation.Revocation("alice", T0)]
    ) == [
        f'(sub =?= "alice@$(TRUST_DOMAIN)" && iat <= {int(T0.timestamp())})',
        f'(sub =?= "{condor_user("bob@x")}@$(TRUST_DOMAIN)" && iat <= {int(T0.timestamp())})',
    ]
    assert revocation.condor_revocation_expr([revocation.Revocation("alice", T0)], "pool.example.org:9618") == [
        f'(sub =?= "alice@pool.example.org:9618" && iat <= {int(T0.timestamp())})'
    ]


@pytest.mark.parametrize("pair", HOSTILE_PAIRS, ids=pair_id)
def test_each_of_a_hostile_pair_gets_its_own_exact_subject(pair):
    first, second, _ = pair
    (clause,) = revocation.condor_revocation_expr([revocation.Revocation(first, T0)])
    subject = clause.split('"')[1]
    assert subject == f"{condor_user(first)}@$(TRUST_DOMAIN)"
    assert subject != revocation.condor_subject(second)
    # nothing in a clause that HTCondor's config reader or the ClassAd parser would interpret, but the macro
    assert clause.count('"') == 2 and "\\" not in clause and "#" not in clause
    assert clause.replace("$(TRUST_DOMAIN)", "").count("$") == 0


@pytest.mark.parametrize("domain", ['pool"x', "pool\\", "$(EVIL)", "a b", "a@b", "x\n", "x#y", ""])
def test_a_trust_domain_that_could_change_the_expression_is_refused(domain, tmp_path):
    with pytest.raises(ValueError, match="trust domain"):
        revocation.condor_revocation_expr([revocation.Revocation("alice", T0)], domain)
    f = tmp_path / "revoked.json"
    f.write_text(revocation.dumps([revocation.Revocation("alice", T0)]))
    r = run("condor-revocations", str(f), "--trust-domain", domain)
    assert r.returncode == 2 and "trust domain" in r.stderr and r.stdout == ""


def test_condor_revocations_prints_the_config_and_prunes_expired_entries(tmp_path):
    now = datetime.datetime.now(UTC)
    old, recent = now - datetime.timedelta(hours=7), now - datetime.timedelta(hours=1)
    f = tmp_path / "revoked\nname.json"  # the source line stays a comment
    f.write_text(revocation.dumps([revocation.Revocation("alice", old), revocation.Revocation("bob", recent)]))
    full = run("condor-revocations", str(f))
    assert full.returncode == 0, full.stderr
    assert full.stdout == revocation.condor_revocation_config(revocation.loads(f.read_text()), source=str(f))
    assert all(line.startswith(("#", "  ", "CASA_REVOKED_IDTOKENS", "SEC_TOKEN")) for line in full.stdout.splitlines())
    assert '"alice@' in full.stdout and '"bob@' in full.stdout
    pruned = run("condor-revocations", str(f), "--prune-after", str(6 * 3600))
    assert '"alice@' not in pruned.stdout and '"bob@' in pruned.stdout

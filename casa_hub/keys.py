"""The admin's side of Casa's keys: ``casa-hub-keys`` (also ``python -m casa_hub.keys``).

* ``casa-hub-keys {issuer,dask-ca,macaroon,servicex,condor} > FILE`` prints a new secret of that kind; admins
  store it as a Kubernetes Secret mounted into the hub pod only (and, for ``condor``, ``macaroon`` and
  ``servicex``, into the consumer that checks it).
* ``casa-hub-keys rotate KIND ...`` prints the steps of rotating that key: what to put where, the exact hub
  configuration of each step and how long to wait between them (admin guide §11). ``--write`` also writes the
  new secret to the ``--next`` file (never over an existing one).
* ``casa-hub-keys condor-revocations REVOKED.json`` prints the HTCondor configuration that makes the pool refuse
  the IDTOKENs of the revoked users in the hub's revocation list (format: ``casa_hub.revocation``).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import os
import secrets
import sys
from pathlib import Path, PurePosixPath

from . import revocation
from .credentials.htcondor import scramble_key_file
from .credentials.issuer import generate_issuer_key_pem

KINDS = ("issuer", "dask-ca", "macaroon", "servicex", "condor")
DEFAULT_MOUNT = "/etc/casa-hub/keys"
# scitokens-cpp (XRootD's SciTokens plugin) refreshes an issuer's cached JWKS 600 s after fetching it, and not
# sooner for a key id it does not know (tests/consumers/test_rotation.py)
XROOTD_KEY_REFRESH = datetime.timedelta(minutes=10)


def generate(kind: str, algorithm: str = "ES256") -> bytes:
    if kind == "issuer":
        return generate_issuer_key_pem(algorithm)
    if kind == "dask-ca":
        return secrets.token_bytes(48)
    if kind == "macaroon":  # XRootD expects base64 text of the raw key
        return base64.b64encode(secrets.token_bytes(32)) + b"\n"
    if kind == "servicex":
        return secrets.token_urlsafe(48).encode()
    if kind == "condor":  # a scrambled pool password as condor_store_cred would write it; no NUL bytes
        password = secrets.token_urlsafe(32).encode()
        return scramble_key_file(password)
    raise ValueError(f"unknown key kind {kind!r} (expected one of {', '.join(KINDS)})")


class UsageError(Exception):
    """Bad input on the command line: printed as ``casa-hub-keys: error: ...``, exit status 2."""


# ---------------------------------------------------------------- argument types with clear messages
def _seconds(option: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} expects a whole number of seconds, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{option} expects a positive number of seconds, got {value}")
        return value

    return parse


def _generation(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--generation expects a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"--generation expects a whole number >= 0, got {value}")
    return value


def _key_id(text: str) -> str:
    # a file name in SEC_PASSWORD_DIRECTORY, and the IDTOKEN's kid
    if not text or not all(c.isascii() and (c.isalnum() or c in "_-") for c in text):
        raise argparse.ArgumentTypeError(f"--key-id expects letters, digits, _ and - only, got {text!r}")
    return text


def _file_name(text: str) -> str:
    if not text or "/" in text or text in (".", "..") or not text.isprintable():
        raise argparse.ArgumentTypeError(f"expected a file name (no directory), got {text!r}")
    return text


# ---------------------------------------------------------------- rotation steps (text only)
def _in_mount(mount: str, name: str) -> str:
    return str(PurePosixPath(mount) / name)


def _yaml_list(items: list[str]) -> str:
    return "[" + ", ".join(items) + "]"


def issuer_steps(current: str, next_: str, retired: list[str], mount: str, lifetime: int) -> str:
    cur, new = _in_mount(mount, current), _in_mount(mount, next_)
    old = [_in_mount(mount, r) for r in retired]
    wait = int(XROOTD_KEY_REFRESH.total_seconds())
    return f"""\
Issuer key rotation: {current} -> {next_} (admin guide §11)

1. Publish. Add {next_} to the hub's key Secret, then set and restart the hub:
   hub:
     config:
       CasaMinter:
         issuer_key_file: {cur}
         issuer_retired_key_files: {_yaml_list([new, *old])}
   The JWKS now holds both keys; {current} still signs.

2. Switch, at least {wait} s after step 1 (XRootD refreshes its cached issuer keys {wait} s after fetching
   them and refuses a key id it has not fetched yet):
   hub:
     config:
       CasaMinter:
         issuer_key_file: {new}
         issuer_retired_key_files: {_yaml_list([cur, *old])}
   Storage tokens are now signed with {next_}; tokens signed with {current} keep verifying.

3. Retire, at least {lifetime} s after step 2 (XCacheToken.lifetime: every token {current} signed has
   expired):
   hub:
     config:
       CasaMinter:
         issuer_key_file: {new}
         issuer_retired_key_files: {_yaml_list(old)}
   Remove {current} from the Secret. XRootD refuses what {current} signed from its next key refresh.
"""


def condor_steps(key_file: str, key_id: str, old_key_id: str, mount: str, lifetime: int) -> str:
    return f"""\
HTCondor signing key rotation: {old_key_id} -> {key_id} (admin guide §11)

1. Pool. Copy the new key file, named {key_id}, into SEC_PASSWORD_DIRECTORY (mode 0600, owner root) on every
   host whose daemons check users' tokens (central manager, access points), then condor_restart those
   daemons: a running daemon keeps the key names it has seen (condor_reconfig does not refresh them).
   Tokens of {old_key_id} keep working.

2. Hub. Add the same file to the hub's key Secret as {key_file}, then set and restart the hub:
   hub:
     config:
       HTCondorToken:
         signing_key_file: {_in_mount(mount, key_file)}
         key_id: {key_id}
   Logins and renewals now get IDTOKENs signed with {key_id}.

3. Retire, at least {lifetime} s after step 2 (HTCondorToken.lifetime): remove {old_key_id} from
   SEC_PASSWORD_DIRECTORY on those hosts, unless the pool itself still signs with it (daemon tokens,
   condor_token_create); the pool refuses {old_key_id} tokens at once. A long-running client process
   (e.g. Python bindings) remembers which keys a daemon offered: start it again after step 1 before it
   uses a {key_id} token.
"""


def shared_secret_steps(kind: str, next_: str, mount: str) -> str:
    if kind == "servicex":
        consumer = "ServiceX: set its JWT_SECRET_KEY (app.conf) to the contents of the new file and restart it"
        setting = "ServiceXToken:\n         secret_file"
        effect = "ServiceX refuses every token signed with the old secret"
    else:
        consumer = "every XRootD/XCache that accepts macaroons: replace its macaroons.secretkey file and restart it"
        setting = "XCacheMacaroon:\n         secret_file"
        effect = "XRootD refuses every macaroon minted with the old secret"
    return f"""\
{kind} secret rotation (no overlap: one secret at a time; admin guide §11)

1. At the same time:
   - {consumer};
   - add {next_} to the hub's key Secret, then set and restart the hub:
   hub:
     config:
       {setting}: {_in_mount(mount, next_)}
2. {effect}.
   A server gets new credentials at its next renewal, or when its user logs in again and restarts it.
"""


def dask_ca_steps(generation: int, next_secret: str | None, mount: str) -> str:
    settings = [f"ca_generation: {generation + 1}"]
    if next_secret:
        settings.append(f"ca_secret_file: {_in_mount(mount, next_secret)}")
        what = f"a new CA secret ({next_secret}: add it to the hub's key Secret) and generation {generation + 1}"
    else:
        what = f"generation {generation} -> {generation + 1}, same secret"
    lines = "\n".join(f"         {x}" for x in settings)
    return f"""\
Dask CA rotation: {what} (admin guide §11)

1. Set and restart the hub:
   hub:
     config:
       DaskTLS:
{lines}
2. Each server gets the new CA at its next renewal (or its first start after a new login). Dask clusters
   already running keep their old CA: they go on serving clients that hold the old files, and refuse
   schedulers, workers and clients made with the new CA. Users close such clusters and start new ones.
"""


# ---------------------------------------------------------------- commands
def _write_new(path: Path, content: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} exists: choose another --next name, nothing was written") from None
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(content)


def _rotate(args) -> str:
    kind = args.kind
    defaults = {"issuer": "issuer-2.pem", "servicex": "servicex-2.secret", "macaroon": "macaroon-2.secret"}
    next_name = args.next or (args.key_id if kind == "condor" else defaults.get(kind))
    if kind == "issuer":
        if next_name == args.current or next_name in args.retired:
            raise UsageError(f"--next {next_name!r} is already in use (--current or --retired)")
        text = issuer_steps(args.current, next_name, args.retired, args.mount, args.lifetime)
    elif kind == "condor":
        if args.key_id == args.old_key_id:
            raise UsageError(f"--key-id {args.key_id!r} must differ from --old-key-id (the key in use)")
        text = condor_steps(next_name, args.key_id, args.old_key_id, args.mount, args.lifetime)
    elif kind == "dask-ca":
        if args.new_secret and not args.next:
            raise UsageError("--new-secret needs --next FILE (the new secret's file name)")
        text = dask_ca_steps(args.generation, args.next if args.new_secret else None, args.mount)
    else:
        text = shared_secret_steps(kind, next_name, args.mount)
    if args.write:
        if kind == "dask-ca" and not args.new_secret:
            raise UsageError("--write: a generation bump has no new file (add --new-secret --next FILE)")
        target = Path(args.dir) / next_name
        _write_new(target, generate(kind, getattr(args, "algorithm", "ES256")))
        text += f"\nWrote the new {kind} secret to {target} (mode 0600).\n"
    return text


def _condor_revocations(args) -> str:
    try:
        data = Path(args.revocations).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read the revocation list {args.revocations}: {e.strerror}") from None
    try:
        revoked = revocation.loads(data)
    except ValueError as e:
        raise UsageError(f"{args.revocations} is not a Casa revocation list: {e}") from None
    if args.prune_after is not None:
        revoked = revocation.still_needed(
            revoked,
            now=datetime.datetime.now(datetime.timezone.utc),
            max_token_lifetime=datetime.timedelta(seconds=args.prune_after),
        )
    try:
        return revocation.condor_revocation_config(revoked, trust_domain=args.trust_domain, source=args.revocations)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="casa-hub-keys",
        description="Make Casa's secrets, print the steps of rotating them, and the HTCondor revocation config.",
        epilog="casa-hub-keys KIND > FILE prints a new secret of KIND (" + ", ".join(KINDS) + ").",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{KIND,rotate,condor-revocations}")
    for kind in KINDS:
        p = sub.add_parser(kind, help=f"print a new {kind} secret")
        p.add_argument("--algorithm", choices=["ES256", "RS256"], default="ES256", help="issuer key algorithm")

    rotate = sub.add_parser("rotate", help="print the steps of rotating a key (and, with --write, make the new one)")
    kinds = rotate.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--mount", default=DEFAULT_MOUNT, help="where the hub's key Secret is mounted")
    common.add_argument("--write", action="store_true", help="write the new secret to DIR/NEXT (never overwrites)")
    common.add_argument("--dir", default=".", help="directory for --write (default: the current one)")

    p = kinds.add_parser("issuer", parents=[common], help="the storage-token issuer key (with overlap)")
    p.add_argument("--current", type=_file_name, default="issuer.pem", help="file name of the key that signs now")
    p.add_argument("--next", type=_file_name, help="file name of the new key (default issuer-2.pem)")
    p.add_argument("--retired", type=_file_name, action="append", default=[], help="retired keys still published")
    p.add_argument("--lifetime", type=_seconds("--lifetime"), default=3600, help="XCacheToken.lifetime (s)")
    p.add_argument("--algorithm", choices=["ES256", "RS256"], default="ES256", help="the new key's algorithm")

    p = kinds.add_parser("condor", parents=[common], help="the HTCondor token signing key (a new named key)")
    p.add_argument("--key-id", type=_key_id, default="POOL2", help="name of the new key (default POOL2)")
    p.add_argument("--old-key-id", type=_key_id, default="POOL", help="name of the key in use (default POOL)")
    p.add_argument("--next", type=_file_name, help="file name in the hub's Secret (default: the key id)")
    p.add_argument("--lifetime", type=_seconds("--lifetime"), default=6 * 3600, help="HTCondorToken.lifetime (s)")

    for kind in ("servicex", "macaroon"):
        p = kinds.add_parser(kind, parents=[common], help=f"the {kind} secret (no overlap)")
        p.add_argument("--next", type=_file_name, help=f"file name of the new secret (default {kind}-2.secret)")

    p = kinds.add_parser("dask-ca", parents=[common], help="every user's Dask CA (generation bump or new secret)")
    p.add_argument("--generation", type=_generation, required=True, help="DaskTLS.ca_generation now in use")
    p.add_argument("--new-secret", action="store_true", help="also replace the CA secret (it was exposed)")
    p.add_argument("--next", type=_file_name, help="file name of the new CA secret (with --new-secret)")

    p = sub.add_parser("condor-revocations", help="print the pool configuration refusing revoked users' IDTOKENs")
    p.add_argument("revocations", metavar="REVOKED.json", help="the hub's revocation list (casa_hub.revocation)")
    p.add_argument(
        "--trust-domain",
        default=revocation.POOL_TRUST_DOMAIN,
        help="the pool's TRUST_DOMAIN (default: $(TRUST_DOMAIN), expanded by each host's own configuration)",
    )
    p.add_argument(
        "--prune-after",
        type=_seconds("--prune-after"),
        help="leave out users revoked longer ago than this many seconds (the longest IDTOKEN lifetime)",
    )
    return parser


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command in KINDS:
            sys.stdout.buffer.write(generate(args.command, args.algorithm))
        elif args.command == "rotate":
            sys.stdout.write(_rotate(args))
        else:
            sys.stdout.write(_condor_revocations(args))
    except UsageError as e:
        parser.exit(2, f"casa-hub-keys: error: {e}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

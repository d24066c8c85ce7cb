"""A real HTCondor 23.9 personal pool (collector, negotiator, schedd, startd with one declared GPU) for the
IDTOKEN tests, run from the Debian trixie root that scripts/provision.sh builds (HTCondor 23 is not packaged
for Debian 12).

``condor_master -f`` runs inside ``unshare -m`` + ``chroot``. Everything the pool needs is mounted in that
private mount namespace only, so nothing outside it (and no other pool started from the same root) sees it:

* ``/proc``, a private ``/tmp``, ``/dev/shm`` (mode 1777) and an ``/root`` that job users may traverse;
* the pool's work dir (config, logs, spool, execute), the venv and the Python prefix it links to, at the
  same paths as outside, so job scripts written outside run unchanged inside;
* ``/etc/passwd`` and ``/etc/group`` copies that add the test users (jobs run as their owner);
* the pool signing key: a 0700 tmpfs on ``<work>/passwords.d`` filled from a pipe. Outside the namespace
  that directory is empty, so a client running as root outside cannot read the key (as root the HTCondor
  tools would otherwise silently authenticate as ``condor@password`` with it) and must present a token.

Client tools (``condor_submit``/``condor_q``/``condor_rm``) only exist inside the root: :meth:`Pool.tools`
writes wrappers that ``nsenter`` the pool's namespace as an unprivileged user with a token directory.
"""

from __future__ import annotations

import datetime
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from casa_hub import keys
from casa_hub.credentials import htcondor as idtokens
from tests.support import REPO, free_port, wait_for_port

CONDOR_ROOT = Path(os.environ.get("CASA_CONDOR_ROOT", "/var/cache/casa-hub/condor-root"))
MASTER = CONDOR_ROOT / "usr" / "sbin" / "condor_master"
TRUST_DOMAIN = "pool.casa.test"
VENV = REPO / ".venv"
PY_PREFIX = Path(sys.base_prefix)  # what the venv's python links to (/root/.pyenv/versions/3.x)
GPU_NAME = "CUDA0"

POOL_CONFIG = """\
use ROLE : Personal
use POLICY : ALWAYS_RUN_JOBS
use FEATURE : PartitionableSlot
RELEASE_DIR = /usr
LOCAL_DIR = {work}
LOG = $(LOCAL_DIR)/log
SPOOL = $(LOCAL_DIR)/spool
EXECUTE = $(LOCAL_DIR)/execute
LOCK = $(LOCAL_DIR)/lock
RUN = $(LOCAL_DIR)/run
CONDOR_HOST = 127.0.0.1
COLLECTOR_HOST = 127.0.0.1:{port}
NETWORK_INTERFACE = 127.0.0.1
ENABLE_IPV6 = False
BIND_ALL_INTERFACES = False
USE_SHARED_PORT = False
MOUNT_UNDER_SCRATCH =
SCHEDD_ADDRESS_FILE = $(LOG)/.schedd_address
STARTD_ADDRESS_FILE = $(LOG)/.startd_address

# identities: tokens name <account>@TRUST_DOMAIN (condor_user of the hub name); jobs run as that Unix user
TRUST_DOMAIN = {domain}
UID_DOMAIN = {domain}
SEC_PASSWORD_DIRECTORY = {work}/passwords.d
SEC_TOKEN_SYSTEM_DIRECTORY = {work}/tokens.d
# an admin's drop-in files (e.g. Casa's token revocations), read at start and at condor_reconfig
LOCAL_CONFIG_DIR = {work}/config.d
SEC_DEFAULT_AUTHENTICATION = REQUIRED
SEC_DEFAULT_ENCRYPTION = REQUIRED
SEC_DEFAULT_INTEGRITY = REQUIRED
# daemons authenticate to each other with FS (same machine, same private /tmp); users only with IDTOKENS
SEC_DEFAULT_AUTHENTICATION_METHODS = FS, IDTOKENS
SEC_READ_AUTHENTICATION_METHODS = FS, IDTOKENS
SEC_WRITE_AUTHENTICATION_METHODS = FS, IDTOKENS
SEC_CLIENT_AUTHENTICATION_METHODS = FS, IDTOKENS
ALLOW_READ = *@{domain}
ALLOW_WRITE = *@{domain}
ALLOW_DAEMON = condor@{domain}, root@{domain}
ALLOW_NEGOTIATOR = condor@{domain}, root@{domain}
# root's tools on the central manager authenticate by FS as condor@ (condor_reconfig in Pool.admin)
ALLOW_ADMINISTRATOR = root@{domain}, condor@{domain}
ALLOW_CONFIG = root@{domain}
QUEUE_SUPER_USERS = root, condor

# resources: one partitionable slot with a declared GPU
NUM_CPUS = 2
MEMORY = 2048
MACHINE_RESOURCE_GPUs = {gpu}

# a fast pool
UPDATE_INTERVAL = 2
SCHEDD_INTERVAL = 2
SCHEDD_MIN_INTERVAL = 1
NEGOTIATOR_INTERVAL = 2
NEGOTIATOR_MIN_INTERVAL = 1
NEGOTIATOR_CYCLE_DELAY = 1
STARTER_UPDATE_INTERVAL = 2
SHADOW_QUEUE_UPDATE_INTERVAL = 2
SCHEDD_DEBUG = D_SECURITY:2 D_COMMAND
"""

# the client side (tests outside the root, wrappers inside): IDTOKENS only, no key, an empty token dir
CLIENT_CONFIG = """\
COLLECTOR_HOST = 127.0.0.1:{port}
NETWORK_INTERFACE = 127.0.0.1
ENABLE_IPV6 = False
USE_SHARED_PORT = False
# the tools find "the local schedd" from its address file, without asking the collector
SCHEDD_ADDRESS_FILE = {work}/log/.schedd_address
SEC_CLIENT_AUTHENTICATION = REQUIRED
SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS
SEC_CLIENT_ENCRYPTION = REQUIRED
SEC_CLIENT_INTEGRITY = REQUIRED
SEC_PASSWORD_DIRECTORY = {work}/passwords.d
SEC_PASSWORD_FILE = {work}/passwords.d/POOL
SEC_TOKEN_DIRECTORY = {work}/no-tokens.d
SEC_TOKEN_SYSTEM_DIRECTORY = {work}/no-tokens.d
"""

# runs under `unshare -m`: private mounts, the key from stdin into a tmpfs, then the master
_NAMESPACE_SCRIPT = r"""
set -eu
mount -t proc proc "$R/proc"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
mount -t tmpfs -o mode=0711 tmpfs "$R/root"
for d in "$W" "$VENV" "$PYPREFIX"; do
  mkdir -p "$R$d"
  mount --bind "$d" "$R$d"
done
mount --bind "$W/etc/passwd" "$R/etc/passwd"
mount --bind "$W/etc/group" "$R/etc/group"
mount --bind "$W/etc/hosts" "$R/etc/hosts"
mount -t tmpfs -o mode=0700,size=64k tmpfs "$R$W/passwords.d"
(umask 077 && cat > "$R$W/passwords.d/POOL")
exec chroot "$R" /usr/sbin/condor_master -f </dev/null
"""


def available() -> bool:
    return MASTER.exists() and shutil.which("unshare") is not None and shutil.which("nsenter") is not None


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


@dataclass
class Pool:
    root: Path
    work: Path
    port: int
    trust_domain: str
    proc: subprocess.Popen | None  # condor_master (after unshare/sh/chroot exec'd into it); None before start
    mnt_ns: str  # the namespace every pool process lives in (/proc/PID/ns/mnt link text)
    client_config: Path
    hub_key_file: Path  # the hub's copy of the pool key, for the minter
    users: dict[str, User] = field(default_factory=dict)
    startup_seconds: float = 0.0

    @property
    def collector(self) -> str:
        return f"<127.0.0.1:{self.port}>"

    def address(self, daemon: str) -> str:
        """A daemon's sinful string, from its address file."""
        return (self.work / "log" / f".{daemon}_address").read_text().splitlines()[0].strip()

    def log(self, name: str) -> str:
        p = self.work / "log" / name
        return p.read_text(errors="replace") if p.exists() else ""

    def user_dir(self, user: str) -> Path:
        """A directory owned by ``user``, visible at the same path inside the root (like a pod's home)."""
        u = self.users[user]
        d = self.work / "home" / user
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, u.uid, u.gid)
        return d

    def give(self, user: str, path: Path, content: bytes, mode: int) -> Path:
        """Write a file owned by ``user`` (tokens and keys must belong to whoever uses them)."""
        u = self.users[user]
        path.parent.mkdir(parents=True, exist_ok=True)
        home = self.work / "home"
        for p in [path.parent, *path.parent.parents]:
            if p == home or p == self.work:
                break
            os.chown(p, u.uid, u.gid)
        path.write_bytes(content)
        os.chown(path, u.uid, u.gid)
        path.chmod(mode)
        return path

    def _nsenter(self, user: str, env: dict[str, str], cwd: Path) -> list[str]:
        u = self.users[user]
        base = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "CONDOR_CONFIG": str(self.client_config)}
        # (nsenter --wd would open the directory outside the root: getcwd() then fails inside; env -C does not)
        return [
            "nsenter",
            "-t",
            str(self.proc.pid),
            "-m",
            "-r",
            "-S",
            str(u.uid),
            "-G",
            str(u.gid),
            "--",
            "/usr/bin/env",
            "-i",
            "-C",
            str(cwd),
            *[f"{k}={v}" for k, v in {**base, **env}.items()],
        ]

    def run(
        self,
        user: str,
        args: list[str],
        *,
        env: dict[str, str],
        cwd: Path,
        timeout: float = 30,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess:
        """Run one of the root's tools as ``user`` with ``env`` (e.g. its token directory)."""
        return subprocess.run(self._nsenter(user, env, cwd) + args, input=input, capture_output=True, timeout=timeout)

    def tools(self, bin_dir: Path, user: str, *, env: dict[str, str], cwd: Path) -> Path:
        """condor_submit/condor_q/condor_rm wrappers running the root's tools as ``user``, for dask-jobqueue.

        The submit description is written outside the root (a host temp file), so it goes in on stdin
        (condor_submit reads stdin when given no file; with ``-`` 23.9 printed the verbose job ad instead of
        "submitted to cluster N", which dask-jobqueue parses)."""
        bin_dir.mkdir(parents=True, exist_ok=True)
        prefix = shlex.join(self._nsenter(user, env, cwd))
        for tool in ("condor_submit", "condor_q", "condor_rm"):
            if tool == "condor_submit":  # last argument: the description file outside the root
                body = (
                    "for f; do :; done\n"
                    'n=$#; i=1; for a; do [ $i -lt $n ] && set -- "$@" "$a"; i=$((i+1)); done; shift $n\n'
                    f'exec {prefix} /usr/bin/{tool} "$@" < "$f"\n'
                )
            else:
                body = f'exec {prefix} /usr/bin/{tool} "$@"\n'
            path = bin_dir / tool
            path.write_text("#!/bin/sh\n" + body)
            path.chmod(0o755)
        return bin_dir

    def admin(self, args: list[str], *, timeout: float = 30, input: bytes | None = None) -> subprocess.CompletedProcess:
        """Run a command as root inside the pool's namespace and root, with the pool's own configuration: what
        an admin on the central manager does (``condor_reconfig`` authenticates as root@TRUST_DOMAIN by FS)."""
        env = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", f"CONDOR_CONFIG={self.work / 'condor_config'}"]
        return subprocess.run(
            ["nsenter", "-t", str(self.proc.pid), "-m", "-r", "--", "/usr/bin/env", "-i", *env, *args],
            input=input,
            capture_output=True,
            timeout=timeout,
        )

    def install_key(self, key_id: str, content: bytes) -> None:
        """Put a signing key named ``key_id`` into the pool's ``SEC_PASSWORD_DIRECTORY`` (inside the namespace
        only, as the pool key is), as an admin adds a key next to ``POOL``."""
        r = self.admin(["sh", "-c", 'umask 077 && cat > "$0"', str(self.work / "passwords.d" / key_id)], input=content)
        assert r.returncode == 0, r.stderr.decode()

    def remove_key(self, key_id: str) -> None:
        r = self.admin(["rm", str(self.work / "passwords.d" / key_id)])
        assert r.returncode == 0, r.stderr.decode()

    def pids(self) -> list[int]:
        """Every process in the pool's mount namespace (the daemons start their own sessions)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.readlink(entry / "ns" / "mnt") == self.mnt_ns:
                        found.append(int(entry.name))
                except OSError:
                    pass
        return found


def _write_passwd(root: Path, work: Path, names: list[str]) -> dict[str, User]:
    """Copies of the root's passwd/group with ``names`` added (existing entries are kept as they are)."""
    (work / "etc").mkdir()
    passwd = (root / "etc" / "passwd").read_text().splitlines()
    group = (root / "etc" / "group").read_text().splitlines()
    taken = {int(line.split(":")[2]) for line in passwd + group if line.count(":") >= 3}
    users = {}
    for name in names:
        existing = [line.split(":") for line in passwd if line.split(":")[0] == name]
        if existing:
            users[name] = User(name, int(existing[0][2]), int(existing[0][3]))
            continue
        uid = next(i for i in range(2000, 60000) if i not in taken)
        taken.add(uid)
        passwd.append(f"{name}:x:{uid}:{uid}::/nonexistent:/bin/sh")
        group.append(f"{name}:x:{uid}:")
        users[name] = User(name, uid, uid)
    (work / "etc" / "passwd").write_text("\n".join(passwd) + "\n")
    (work / "etc" / "group").write_text("\n".join(group) + "\n")
    # the daemons look up this machine's name: resolve it inside the root too
    hosts = (root / "etc" / "hosts").read_text() if (root / "etc" / "hosts").exists() else ""
    (work / "etc" / "hosts").write_text(f"127.0.0.1 localhost {socket.gethostname()}\n" + hosts)
    return users


def _condor_ids(root: Path) -> tuple[int, int]:
    for line in (root / "etc" / "passwd").read_text().splitlines():
        f = line.split(":")
        if f[0] == "condor":
            return int(f[2]), int(f[3])
    raise RuntimeError(f"no condor user in {root}/etc/passwd")


def probe_token(pool_key: bytes, trust_domain: str) -> str:
    """A READ-only token for the readiness probe (what any pool user could do)."""
    tok, _ = idtokens.mint_idtoken(
        signing_key=idtokens.signing_key_from_file(pool_key),
        key_id="POOL",
        trust_domain=trust_domain,
        user="casa-probe",
        now=datetime.datetime.now(datetime.timezone.utc),
        lifetime=datetime.timedelta(minutes=10),
        scopes=["condor:/READ"],
    )
    return tok.decode().strip()


def start_pool(hub_key_file: Path, *, users=("alice",), trust_domain: str = TRUST_DOMAIN, timeout: float = 60) -> Pool:
    """Start a pool whose signing key is a fresh ``keys.generate("condor")``; the hub's copy goes to
    ``hub_key_file`` (for the minter), the pool's copy exists only inside the pool's namespace. ``users`` are
    local *account* names (``condor_user`` of hub names), added to the pool's private ``/etc/passwd``."""
    import htcondor2  # noqa: F401 - the bindings must be importable before a pool is worth starting

    t0 = time.monotonic()
    pool_key = keys.generate("condor")
    hub_key_file.parent.mkdir(parents=True, exist_ok=True)
    hub_key_file.write_bytes(pool_key)
    hub_key_file.chmod(0o600)

    # the work dir is seen by job users inside the root: no 0700 parents (pytest's tmp dirs are 0700)
    work = Path(tempfile.mkdtemp(prefix="casa-condor-pool-"))
    work.chmod(0o755)
    cuid, cgid = _condor_ids(CONDOR_ROOT)
    for d in ("log", "spool", "execute", "lock", "run", "tokens.d"):
        (work / d).mkdir(mode=0o755)
        os.chown(work / d, cuid, cgid)
    (work / "passwords.d").mkdir(mode=0o700)  # stays empty outside: the key lives in a namespace tmpfs
    (work / "config.d").mkdir(mode=0o755)
    (work / "no-tokens.d").mkdir(mode=0o755)
    pool_users = _write_passwd(CONDOR_ROOT, work, list(users))
    port = free_port()
    (work / "condor_config").write_text(POOL_CONFIG.format(work=work, port=port, domain=trust_domain, gpu=GPU_NAME))
    client_config = work / "client_config"
    client_config.write_text(CLIENT_CONFIG.format(work=work, port=port))

    pool = Pool(CONDOR_ROOT, work, port, trust_domain, None, "", client_config, hub_key_file, pool_users)
    _launch(pool, pool_key, timeout)
    pool.startup_seconds = time.monotonic() - t0
    return pool


def _launch(pool: Pool, pool_key: bytes, timeout: float) -> None:
    """Start condor_master in a fresh private namespace (the key from ``pool_key``) and wait, bounded, until
    the schedd answers an authenticated command; on failure the pool's processes are gone (not its files)."""
    import htcondor2

    work = pool.work
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "CONDOR_CONFIG": str(work / "condor_config"),
        "R": str(pool.root),
        "W": str(work),
        "VENV": str(VENV),
        "PYPREFIX": str(PY_PREFIX),
    }
    proc = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", _NAMESPACE_SCRIPT],
        env=env,
        stdin=subprocess.PIPE,
        stdout=open(work / "master.out", "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    proc.stdin.write(pool_key)
    proc.stdin.close()
    own_ns = os.readlink("/proc/self/ns/mnt")
    pool.proc, pool.mnt_ns = proc, ""
    port, trust_domain = pool.port, pool.trust_domain
    try:
        deadline = time.monotonic() + timeout
        while True:  # the namespace exists once unshare has run; the pid is condor_master after the execs
            if proc.poll() is not None:
                raise RuntimeError(f"exited with {proc.returncode}: {(work / 'master.out').read_text()}")
            ns = os.readlink(f"/proc/{proc.pid}/ns/mnt")
            if ns != own_ns:
                pool.mnt_ns = ns
                break
            if time.monotonic() > deadline:
                raise TimeoutError("no private mount namespace")
            time.sleep(0.01)
        wait_for_port(port, proc=proc, timeout=max(1.0, deadline - time.monotonic()))
        schedd_file = work / "log" / ".schedd_address"
        probe = htcondor2.SecurityContext(token=probe_token(pool_key, trust_domain))
        last = None
        while True:  # the schedd answers an authenticated command
            if proc.poll() is not None:
                raise RuntimeError(f"condor_master exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"schedd did not answer: {last}")
            if schedd_file.exists():
                try:
                    ad = htcondor2.ping(pool.address("schedd"), "READ", probe)
                    if ad.get("AuthorizationSucceeded"):
                        break
                except Exception as e:  # noqa: BLE001 - not up yet
                    last = e
            time.sleep(0.1)
    except Exception as e:
        log = pool.log("MasterLog")[-3000:]
        stop_daemons(pool)
        raise RuntimeError(f"the HTCondor pool did not start: {e}\n{log}") from None


def stop_pool(pool: Pool, timeout: float = 20) -> None:
    """Stop the pool's processes (:func:`stop_daemons`) and remove its work directory."""
    stop_daemons(pool, timeout)
    shutil.rmtree(pool.work, ignore_errors=True)


def stop_daemons(pool: Pool, timeout: float = 20) -> None:
    """Fast shutdown (SIGQUIT) of the master, then SIGKILL whatever is left in the pool's namespace; the
    namespace and its mounts (the key's tmpfs included) vanish with its last process. Files stay."""
    if pool.proc is None:
        return
    if pool.proc.poll() is None:
        try:
            os.kill(pool.proc.pid, signal.SIGQUIT)
            pool.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while pool.mnt_ns and (left := pool.pids()):
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"pool processes {left} survived SIGKILL")
        time.sleep(0.05)
    if pool.proc.poll() is None:
        pool.proc.kill()
    pool.proc.wait(5)


def start_daemons(pool: Pool, *, pool_key: bytes | None = None, timeout: float = 60) -> float:
    """Start a stopped pool again: same work dir (config, logs, spool with its job queue), same collector
    port, and the pool key from the hub's copy unless ``pool_key`` is given. Returns the seconds until the
    schedd answered."""
    assert pool.proc is None or pool.proc.poll() is not None, "the pool is running"
    assert not (pool.mnt_ns and pool.pids()), "processes of the previous pool namespace are still alive"
    for stale in (pool.work / "log").glob(".*_address*"):  # the old daemons' ports: never probe those
        stale.unlink()
    t0 = time.monotonic()
    _launch(pool, pool.hub_key_file.read_bytes() if pool_key is None else pool_key, timeout)
    return time.monotonic() - t0


def restart_pool(pool: Pool, *, timeout: float = 60) -> float:
    """condor_master and all its children stopped, then started again (:func:`start_daemons`); seconds taken."""
    t0 = time.monotonic()
    stop_daemons(pool)
    start_daemons(pool, timeout=timeout)
    return time.monotonic() - t0

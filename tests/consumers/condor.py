"""A real HTCondor 23.9 personal pool for the IDTOKEN tests, running from the Debian trixie root that
scripts/provision.sh builds (HTCondor is not packaged for Debian 12).

The daemons run inside ``unshare -m`` + ``chroot``; the pool's work directory, this repository (for the
venv the Dask worker jobs run) and the Python installation the venv points at are bind-mounted at the same
paths, so job scripts written outside work unchanged inside. Test clients talk to the pool from outside
the root over 127.0.0.1 and can never read its signing key (it lives in a 0700 directory owned by root
inside the work dir, and clients authenticate only with IDTOKENS).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from casa_hub import keys
from tests.support import REPO, free_port, stop_process, wait_for_port

CONDOR_ROOT = Path(os.environ.get("CASA_CONDOR_ROOT", "/var/cache/casa-hub/condor-root"))
TRUST_DOMAIN = "casa.test"

CONFIG = """
RELEASE_DIR = /usr
LOCAL_DIR = {work}
LOG = $(LOCAL_DIR)/log
SPOOL = $(LOCAL_DIR)/spool
EXECUTE = $(LOCAL_DIR)/execute
LOCK = $(LOCAL_DIR)/lock
RUN = $(LOCAL_DIR)/run
use ROLE : Personal
CONDOR_HOST = 127.0.0.1
NETWORK_INTERFACE = 127.0.0.1
ENABLE_IPV6 = False
USE_SHARED_PORT = False
COLLECTOR_HOST = 127.0.0.1:{port}
UID_DOMAIN = {domain}
TRUST_DOMAIN = {domain}
SEC_PASSWORD_DIRECTORY = {work}/passwords.d
SEC_TOKEN_SYSTEM_DIRECTORY = {work}/tokens.d
SEC_DEFAULT_AUTHENTICATION = REQUIRED
SEC_DEFAULT_AUTHENTICATION_METHODS = FS, IDTOKENS
SEC_DEFAULT_ENCRYPTION = REQUIRED
SEC_DEFAULT_INTEGRITY = REQUIRED
SEC_READ_AUTHENTICATION = REQUIRED
ALLOW_READ = *@{domain}, condor@*, root@*
ALLOW_WRITE = *@{domain}, condor@*, root@*
ALLOW_DAEMON = condor@*, root@*
ALLOW_NEGOTIATOR = condor@*, root@*
ALLOW_ADMINISTRATOR = root@*
MOUNT_UNDER_SCRATCH =
# one declared GPU, so request_gpus = 1 can match
MACHINE_RESOURCE_GPUs = CUDA0
NUM_CPUS = 2
SCHEDD_INTERVAL = 2
NEGOTIATOR_INTERVAL = 2
NEGOTIATOR_CYCLE_DELAY = 1
UPDATE_INTERVAL = 2
STARTER_UPDATE_INTERVAL = 2
SCHEDD_MIN_INTERVAL = 1
SCHEDD_DEBUG = D_SECURITY:1
STARTD_ADDRESS_FILE = $(LOG)/.startd_address
SCHEDD_ADDRESS_FILE = $(LOG)/.schedd_address
STARTER_ALLOW_RUNAS_OWNER = True
"""


@dataclass
class Pool:
    root: Path
    work: Path
    collector: str  # sinful string, "<127.0.0.1:port>"
    port: int
    key_file: Path
    proc: subprocess.Popen
    mount_ns: str | None = None  # the daemons' mount namespace, to reap them all at the end

    def address(self, daemon: str) -> str:
        """The sinful string of a daemon from its address file (first line)."""
        path = self.work / "log" / f".{daemon}_address"
        return path.read_text().splitlines()[0].strip()

    def log(self, name: str) -> str:
        p = self.work / "log" / name
        return p.read_text(errors="replace") if p.exists() else ""

    def in_root(self, args: list[str], *, user: str, env: dict[str, str], timeout: float = 60,
                input: str | None = None) -> subprocess.CompletedProcess:
        """Run a command of the pool's root as an unprivileged ``user`` (as a real submit host would)."""
        return subprocess.run(
            ["unshare", "-m", "sh", "-c", _MOUNTS + ' exec chroot --userspec="$U" "$R" env "$@"', "sh",
             *[f"{k}={v}" for k, v in env.items()], *args],
            env=dict(self._mount_env(), U=f"{user}:{user}"), capture_output=True, text=True, timeout=timeout,
            input=input)

    def _mount_env(self) -> dict[str, str]:
        return _mount_env(self.root, self.work)


# bind the work dir, the repository (its .venv) and the interpreter behind the venv at the same paths
_MOUNTS = ('mount -t proc proc "$R/proc" && for d in "$W" "$REPO" "$PYPREFIX"; do '
           'mkdir -p "$R$d" && mount --bind "$d" "$R$d" || exit 98; done;')


def _mount_env(root: Path, work: Path) -> dict[str, str]:
    return dict(os.environ, R=str(root), W=str(work), REPO=str(REPO), PYPREFIX=sys.base_prefix)


def _condor_ids(root: Path) -> tuple[int, int]:
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "condor":
            return int(fields[2]), int(fields[3])
    raise RuntimeError(f"no condor user in {root}/etc/passwd")


def available() -> bool:
    return (CONDOR_ROOT / "usr" / "sbin" / "condor_master").exists() and shutil.which("unshare") is not None


def ensure_user(root: Path, user: str) -> None:
    """Create ``user`` inside the root (idempotent) so jobs run as that Unix user."""
    if subprocess.run(["chroot", str(root), "id", "-u", user], capture_output=True).returncode != 0:
        subprocess.run(["chroot", str(root), "useradd", "-M", "-s", "/bin/sh", user], check=True)


def start_pool(timeout: float = 60) -> Pool:
    # paths of the pool must be reachable by the job user: no 0700 parents (pytest's tmp dirs are 0700)
    work = Path(tempfile.mkdtemp(prefix="casa-condor-"))
    work.chmod(0o755)
    uid, gid = _condor_ids(CONDOR_ROOT)
    for d in ("log", "spool", "execute", "lock", "run", "tokens.d"):
        (work / d).mkdir(mode=0o755)
        os.chown(work / d, uid, gid)  # the daemons drop to the condor user to write these
    (work / "passwords.d").mkdir(mode=0o700)
    key_file = work / "passwords.d" / "POOL"
    key_file.write_bytes(keys.generate("condor"))
    key_file.chmod(0o600)
    port = free_port()
    (work / "condor_config").write_text(CONFIG.format(work=work, port=port, domain=TRUST_DOMAIN))
    # the pool's python prefix (/root/.pyenv/...) must be traversable for job users inside the root
    for parent in Path(sys.base_prefix).parents:
        inner = CONDOR_ROOT / str(parent).lstrip("/")
        inner.mkdir(parents=True, exist_ok=True)
        inner.chmod(inner.stat().st_mode | 0o011)
    (CONDOR_ROOT / "dev" / "shm").mkdir(parents=True, exist_ok=True)
    (CONDOR_ROOT / "dev" / "shm").chmod(0o1777)
    env = dict(_mount_env(CONDOR_ROOT, work), CONDOR_CONFIG=str(work / "condor_config"))
    proc = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", _MOUNTS + ' exec chroot "$R" /usr/sbin/condor_master -f'],
        env=env, stdout=open(work / "master.out", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    pool = Pool(CONDOR_ROOT, work, f"<127.0.0.1:{port}>", port, key_file, proc)
    try:
        wait_for_port(port, proc=proc, timeout=timeout)
        pool.mount_ns = os.readlink(f"/proc/{proc.pid}/ns/mnt")
        deadline = time.monotonic() + timeout
        while not all((work / "log" / f".{d}_address").exists() for d in ("schedd", "startd")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("schedd/startd did not come up")
            time.sleep(0.1)
    except Exception as e:
        stop_pool(pool)
        raise RuntimeError(f"HTCondor pool did not start: {e}\n{pool.log('MasterLog')[-3000:]}") from None
    return pool


def _processes_in_namespace(ns: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns" / "mnt") == ns:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def stop_pool(pool: Pool) -> None:
    """Stop the master, then anything left in the pool's mount namespace (daemons have their own
    process groups, so a master killed hard would orphan them)."""
    ns = pool.mount_ns
    stop_process(pool.proc, timeout=20)
    if ns and ns != os.readlink("/proc/self/ns/mnt"):
        for pid in _processes_in_namespace(ns):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    shutil.rmtree(pool.work, ignore_errors=True)


def user_tools(pool: Pool, user: str, token_dir: Path, bin_dir: Path) -> Path:
    """``condor_submit``/``condor_rm``/``condor_q`` wrappers that run the pool root's tools as ``user``,
    authenticating with IDTOKENS only from ``token_dir`` (what a Casa pod has), for dask-jobqueue's PATH."""
    ensure_user(pool.root, user)
    bin_dir.mkdir(parents=True, exist_ok=True)
    exports = {
        "CONDOR_CONFIG": pool.work / "condor_config",
        "_CONDOR_SEC_TOKEN_DIRECTORY": token_dir,
        "_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS": "IDTOKENS",
        "R": pool.root, "W": pool.work, "REPO": REPO, "PYPREFIX": sys.base_prefix, "U": f"{user}:{user}",
    }
    header = "#!/bin/sh\n" + "".join(f"export {k}='{v}'\n" for k, v in exports.items())
    run = f"exec unshare -m sh -c '{_MOUNTS} exec chroot --userspec=\"$U\" \"$R\" \"$@\"' sh"
    scripts = {
        # dask-jobqueue calls `condor_submit <file>`; the file lives outside the root, so pass it on stdin
        "condor_submit": header + '[ $# -eq 1 ] || { echo "usage: condor_submit FILE" >&2; exit 2; }\n'
                                  f'exec < "$1"\n{run} /usr/bin/condor_submit\n',  # no file: read stdin
        "condor_rm": header + f'{run} /usr/bin/condor_rm "$@"\n',
        "condor_q": header + f'{run} /usr/bin/condor_q "$@"\n',
    }
    for tool, script in scripts.items():
        path = bin_dir / tool
        path.write_text(script)
        path.chmod(0o755)
    return bin_dir

"""A whole facility for the scale benchmarks: the demo OIDC provider with N users, the Kubernetes emulator
(its kubelet starts pods once their Secrets exist), configurable-http-proxy in its own process as Z2JH's chart
runs it (so its routes outlive a hub restart), JupyterHub with CasaAuthenticator and either CasaSpawner or the
Coffea-Casa-style baseline, and an asyncio client that logs people in through the real OAuth flow, submits the
spawn form and waits on the progress stream, as a browser does.

The hub runs :mod:`benchmarks.hub_probe`, so the benchmarks read the hub's event-loop lag from inside it.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import hub_probe  # noqa: E402
from tests.hub import hub as H  # noqa: E402
from tests.hub.kube import start_kube, stop_kube  # noqa: E402
from tests.hub.oidc import start_provider, stop_provider  # noqa: E402
from tests.support import free_port  # noqa: E402

PROFILES = [
    {"display_name": "CPU", "slug": "cpu", "default": True, "kubespawner_override": {"cpu_limit": 2}},
    {"display_name": "CPU, large", "slug": "cpu-large", "kubespawner_override": {"cpu_limit": 8}},
]

COMMON = """
import sys
sys.path.insert(0, {repo!r})
from benchmarks import hub_probe
hub_probe.start({lag_file!r})
c.KubeSpawner.namespace = "default"
c.KubeSpawner.port = {pod_port}
c.KubeSpawner.fs_gid = 100
c.KubeSpawner.image = "registry.example.org/casa/notebook:bench"
c.KubeSpawner.profile_list = {profiles!r}
c.KubeSpawner.start_timeout = 600
c.KubeSpawner.http_timeout = 300
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.cleanup_servers = False
"""

MODES = {
    # Casa: credentials minted at login in worker threads; Secret written by the async spawner
    "casa": 'c.JupyterHub.spawner_class = "casa"\n',
    # JupyterHub's floor: plain KubeSpawner, the same OIDC login, no credentials minted or delivered
    "kubespawner": (
        'c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"\n'
        "from benchmarks.plain_kubespawner import NoCredentialsAuthenticator\n"
        "c.JupyterHub.authenticator_class = NoCredentialsAuthenticator\n"
    ),
    # Coffea-Casa: plain KubeSpawner whose pre_spawn_hook mints RSA and calls the API synchronously
    "coffea": (
        'c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"\n'
        "from benchmarks.coffea_baseline import coffea_pre_spawn_hook\n"
        "c.KubeSpawner.pre_spawn_hook = coffea_pre_spawn_hook\n"
    ),
}


def user_names(n: int) -> list[str]:
    return [f"physicist{i:04d}" for i in range(n)]


@dataclass
class Facility:
    work: Path
    provider: object
    kube: object
    hub: H.Hub | None
    lag_file: Path
    pod_port: int
    mode: str
    extra: str = ""
    proxy: H.Proxy | None = None  # None: the hub starts its own proxy (and loses its routes when it stops)

    def config(self, extra: str = "") -> str:
        return (
            COMMON.format(repo=str(REPO), lag_file=str(self.lag_file), pod_port=self.pod_port, profiles=PROFILES)
            + MODES[self.mode]
            + self.extra
            + extra
        )

    def start_hub(self, extra: str = "") -> H.Hub:
        self.hub = H.start_hub(
            self.work / "hub",
            self.provider,
            extra_config=self.config(extra),
            env={"KUBECONFIG": str(self.kube.kubeconfig)},
            timeout=600,
            proxy=self.proxy,
        )
        return self.hub

    def stop_hub(self) -> None:
        if self.hub is not None:
            H.stop_hub(self.hub)
            self.hub = None

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.hub.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_by_process(self) -> dict[str, float]:
        """CPU seconds used so far by each running process of the facility (a proxy the hub starts is its child,
        counted in the hub's figure only once it exits: it is left out)."""
        pids = {"kubernetes emulator": self.kube.proc.pid, "OIDC provider": self.provider.proc.pid}
        if self.hub is not None:
            pids["hub"] = self.hub.proc.pid
        if self.proxy is not None:
            pids["proxy"] = self.proxy.proc.pid
        return {name: process_cpu_seconds(pid) for name, pid in pids.items()}

    def lag(self, since: float, until: float) -> list[float]:
        return hub_probe.read(str(self.lag_file), since, until)

    def gc(self, since: float, until: float) -> tuple[float, int]:
        """The hub's garbage collection between two wall-clock times: seconds, full collections."""
        return hub_probe.read_gc(str(self.lag_file), since, until)

    def secrets(self) -> list[dict]:
        return self.kube.objects("secrets")


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


@contextmanager
def facility(work: Path, n_users: int, mode: str = "casa", extra: str = "", separate_proxy: bool = True):
    """Provider with ``n_users`` (group cms; see :func:`user_names`), emulator, proxy (``separate_proxy``: in its
    own process, as the chart runs it; else the hub starts its own) and hub; all stopped on exit."""
    work.mkdir(parents=True, exist_ok=True)
    users = [
        {"sub": name, "preferred_username": name, "email": f"{name}@casa.test", "name": name, "groups": ["cms"]}
        for name in user_names(n_users)
    ]
    provider = start_provider(work, users=users)
    kube = proxy = site = None
    try:
        kube = start_kube(work)
        proxy = H.start_proxy(work) if separate_proxy else None
        site = Facility(work, provider, kube, None, work / "lag.txt", free_port(), mode, extra, proxy)
        site.start_hub()
        yield site
    finally:
        if site is not None:
            site.stop_hub()
        if proxy is not None:
            H.stop_proxy(proxy)
        if kube is not None:
            stop_kube(kube)
        stop_provider(provider)


@dataclass
class Journey:
    """One person's login and spawn, with the times (monotonic seconds) each step finished."""

    name: str
    started: float = 0.0
    logged_in: float | None = None
    spawn_requested: float | None = None
    ready: float | None = None
    error: str | None = None
    events: list = field(default_factory=list)


async def login_and_spawn(hub_url: str, name: str, profile: str = "cpu", timeout: float = 600) -> Journey:
    """What a browser does: OAuth login (PKCE, provider's form), the spawn form, then the progress stream."""
    journey = Journey(name, started=time.monotonic())
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as c:
            r = await c.get(f"{hub_url}/hub/oauth_login")
            _expect(r, 302, "oauth_login")
            authorize = r.headers["location"]
            _expect(await c.get(authorize), 200, "provider form")
            r = await c.post(authorize, data={"sub": name})
            _expect(r, 302, "provider consent")
            r = await c.get(r.headers["location"])
            _expect(r, 302, "hub callback")
            journey.logged_in = time.monotonic()
            r = await c.get(f"{hub_url}/hub/spawn")
            _expect(r, 200, "spawn form")
            r = await c.post(f"{hub_url}/hub/spawn", data={"profile": profile, "_xsrf": c.cookies.get("_xsrf", "")})
            _expect(r, 302, "spawn submit")
            journey.spawn_requested = time.monotonic()
            async with c.stream(
                "GET", f"{hub_url}/hub/api/users/{name}/server/progress", headers={"Accept": "text/event-stream"}
            ) as stream:
                _expect(stream, 200, "progress stream")
                async for line in stream.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    event = json.loads(line[5:])
                    journey.events.append(event.get("message", ""))
                    if event.get("failed"):
                        raise RuntimeError(f"spawn failed: {event.get('message')}")
                    if event.get("ready"):
                        journey.ready = time.monotonic()
                        break
            if journey.ready is None:
                raise RuntimeError("progress stream ended without 'ready'")
    except Exception as e:  # a failure of one person is a result, not the end of the benchmark
        journey.error = f"{type(e).__name__}: {e}"[:300]
    return journey


def _expect(response, status: int, step: str) -> None:
    if response.status_code != status:
        raise RuntimeError(f"{step}: HTTP {response.status_code}")


async def storm(hub_url: str, names: list[str], concurrency: int | None = None, ramp: float = 0.0) -> list[Journey]:
    """Everyone at once, or arriving evenly over ``ramp`` seconds, or ``concurrency`` at a time."""
    slots = asyncio.Semaphore(concurrency or len(names))

    async def one(i, name):
        await asyncio.sleep(ramp * i / len(names))
        async with slots:
            return await login_and_spawn(hub_url, name)

    return await asyncio.gather(*(one(i, n) for i, n in enumerate(names)))


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not samples:
        return math.nan
    s = sorted(samples)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def summary(samples: list[float]) -> str:
    if not samples:
        return "n=0"
    return (
        f"p50 {percentile(samples, 50):8.1f}  p99 {percentile(samples, 99):8.1f}  "
        f"max {max(samples):8.1f}  n={len(samples)}"
    )


def stall_stats(lags: list[float], interval_ms: float = 5.0) -> dict:
    """How the loop's stalls cover the wall time. The probe samples once per loop turn, so one long stall is
    one sample among thousands of idle ones; weighting each sample by its length shows what a request arriving
    at a random moment meets: ``weighted_p99`` (ms) is the stall that 99 % of the time stays under."""
    if not lags:
        return {"weighted_p99": math.nan, "stalled_s": 0.0, "total_s": 0.0, "stalls": 0}
    weights = [lag + interval_ms for lag in lags]
    total = sum(weights)
    acc, p99 = 0.0, max(lags)
    for lag, w in sorted(zip(lags, weights)):
        acc += w
        if acc >= 0.99 * total:
            p99 = lag
            break
    long = [lag for lag in lags if lag >= 10]
    return {"weighted_p99": p99, "stalled_s": sum(long) / 1000, "total_s": total / 1000, "stalls": len(long)}


def stall_summary(lags: list[float]) -> str:
    s = stall_stats(lags)
    return (
        f"time-weighted p99 {s['weighted_p99']:7.1f} ms; stalls >= 10 ms: {s['stalls']}, "
        f"{s['stalled_s']:.1f} s of {s['total_s']:.1f} s"
    )


def median(samples: list[float]) -> float:
    return statistics.median(samples) if samples else math.nan

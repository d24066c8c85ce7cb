"""Login storm: N people log in and start a server at the same moment, on a whole facility (demo OIDC
provider, JupyterHub + configurable-http-proxy, the Kubernetes emulator), in three modes in the same run:

- ``casa``: CasaAuthenticator minting at login, CasaSpawner writing the Secret before the pod;
- ``coffea``: a Coffea-Casa-style hub (same authenticator; a pre_spawn_hook minting RSA credentials
  synchronously and calling the Kubernetes API with blocking requests);
- ``kubespawner``: JupyterHub's floor, plain KubeSpawner behind the same OIDC login, nothing minted or mounted.

Reported per mode: failures, storm duration and spawns/s, login and login-to-ready latency (median, p90, p99),
the hub's event-loop lag during the storm (measured inside the hub by benchmarks/hub_probe.py; time-weighted:
what a request arriving at a random moment meets), hub CPU and memory per user. Then the targets: Casa at least
3x faster to ready than the Coffea-style baseline with 0 failures, and Casa's time-weighted loop lag no worse
than plain KubeSpawner's.

Run: .venv/bin/python benchmarks/bench_storm.py [--users 200] [--modes casa coffea kubespawner]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.facility_bench import (  # noqa: E402
    facility,
    median,
    percentile,
    stall_stats,
    stall_summary,
    storm,
    summary,
    user_names,
)


def run_mode(mode: str, n: int, work: Path, ramp: float = 0.0) -> dict:
    with facility(work / mode, n + 1, mode) as site:
        # one person first, so both modes start with warm imports, reflectors and proxy
        [warm] = asyncio.run(storm(site.hub.url, ["physicist0000"]))
        if warm.error:
            raise RuntimeError(f"{mode}: warm-up spawn failed: {warm.error}\n{site.hub.log()[-3000:]}")
        time.sleep(1)
        rss_before = site.rss_kib()
        processes_before, client_before = site.cpu_by_process(), time.process_time()
        wall_start = time.time()
        t0 = time.monotonic()
        journeys = asyncio.run(storm(site.hub.url, user_names(n + 1)[1:], ramp=ramp))
        duration = time.monotonic() - t0
        wall_end = time.time()
        processes = {name: used - processes_before[name] for name, used in site.cpu_by_process().items()}
        cpu = processes["hub"]
        processes["benchmark's browsers"] = time.process_time() - client_before
        time.sleep(1)
        rss_after = site.rss_kib()
        lag = site.lag(wall_start, wall_end)
        gc_seconds, full_collections = site.gc(wall_start, wall_end)
        ok = [j for j in journeys if j.error is None]
        failures = [j for j in journeys if j.error is not None]
        secrets = [s["metadata"]["name"] for s in site.secrets()]
        return {
            "mode": mode,
            "n": n,
            "ramp": ramp,
            "ok": len(ok),
            "failures": failures,
            "duration": duration,
            "spawns_per_s": len(ok) / duration if duration else 0.0,
            "login_ms": [(j.logged_in - j.started) * 1000 for j in ok],
            "ready_ms": [(j.ready - j.started) * 1000 for j in ok],
            "lag_ms": lag,
            "cpu_ms_per_user": cpu * 1000 / n,
            "cpu_by_process": processes,
            "gc_seconds": gc_seconds,
            "full_collections": full_collections,
            "rss_kib_per_user": (rss_after - rss_before) / n,
            "rss_after_mib": rss_after / 1024,
            "secrets": len(secrets),
            "distinct_secrets": len(set(secrets)),
        }


def report(r: dict) -> None:
    when = f"arriving over {r['ramp']:.0f} s" if r["ramp"] else "at once"
    print(f"\n== {r['mode']}: {r['n']} people {when} ==")
    print(f"  failures                 {len(r['failures'])}")
    for j in r["failures"][:5]:
        print(f"    {j.name}: {j.error}")
    print(f"  storm duration           {r['duration']:.1f} s   spawns/s {r['spawns_per_s']:.2f}")
    print(f"  login latency (ms)       {summary(r['login_ms'])}")
    print(f"  login-to-ready (ms)      {summary(r['ready_ms'])}")
    print(f"                           median {median(r['ready_ms']):8.1f}  p90 {percentile(r['ready_ms'], 90):8.1f}")
    print(f"  hub event-loop lag (ms)  {summary(r['lag_ms'])}")
    print(f"                           {stall_summary(r['lag_ms'])}")
    print(f"  hub CPU per user         {r['cpu_ms_per_user']:.1f} ms")
    gc_share = r["gc_seconds"] / r["cpu_by_process"]["hub"] if r["cpu_by_process"]["hub"] else 0.0
    print(
        f"  hub garbage collection   {r['gc_seconds']:.2f} s ({gc_share:.0%} of the hub's CPU), "
        f"{r['full_collections']} full collections"
    )
    used = ", ".join(f"{name} {cpu:.1f} s" for name, cpu in r["cpu_by_process"].items())
    print(f"  CPU during the storm     {used} (of {r['duration'] * os.cpu_count():.0f} s on {os.cpu_count()} cores)")
    print(f"  hub memory per user      {r['rss_kib_per_user']:.0f} KiB   (hub RSS after: {r['rss_after_mib']:.0f} MiB)")
    print(f"  Secrets in the cluster   {r['secrets']} ({r['distinct_secrets']} distinct)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["casa", "coffea", "kubespawner"],
        choices=["casa", "coffea", "kubespawner"],
        help="kubespawner: plain KubeSpawner behind the same login, nothing minted or mounted (JupyterHub's floor)",
    )
    parser.add_argument(
        "--ramp",
        type=float,
        default=0.0,
        help="spread the arrivals evenly over this many seconds (default 0: all at once)",
    )
    parser.add_argument("--keep", type=Path, help="keep the logs and state here (default: a temporary directory)")
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="casa-storm-") as tmp:
        for mode in args.modes:
            results[mode] = run_mode(mode, args.users, (args.keep or Path(tmp)) / f"ramp{args.ramp:g}", args.ramp)
            report(results[mode])
    casa = results.get("casa")
    if casa and "coffea" in results:
        base = results["coffea"]
        print("\nRatios, Coffea-Casa-style baseline / Casa (same run):")
        b, c = stall_stats(base["lag_ms"]), stall_stats(casa["lag_ms"])
        print(
            f"  {'loop lag, time-wtd p99':22s} {b['weighted_p99']:7.1f} / {c['weighted_p99']:9.1f} ms = "
            f"{b['weighted_p99'] / c['weighted_p99']:6.1f}x"
        )
        bs, cs = b["stalled_s"] / b["total_s"], c["stalled_s"] / c["total_s"]
        print(f"  {'time in stalls >=10 ms':22s} {bs:7.0%} / {cs:9.0%}")
        for label, key, pct in (
            ("login p50", "login_ms", 50),
            ("login p99", "login_ms", 99),
            ("login-to-ready p50", "ready_ms", 50),
            ("login-to-ready p90", "ready_ms", 90),
            ("login-to-ready p99", "ready_ms", 99),
        ):
            b, c = percentile(base[key], pct), percentile(casa[key], pct)
            print(f"  {label:22s} {b:7.1f} / {c:9.1f} ms = {b / c if c else float('inf'):6.1f}x")
        print(
            f"  {'storm duration':20s} {base['duration']:9.1f} / {casa['duration']:9.1f} s  = "
            f"{base['duration'] / casa['duration']:6.1f}x"
        )
        print(
            f"  {'hub CPU per user':20s} {base['cpu_ms_per_user']:9.1f} / {casa['cpu_ms_per_user']:9.1f} ms = "
            f"{base['cpu_ms_per_user'] / casa['cpu_ms_per_user']:6.1f}x"
        )
    if casa and "kubespawner" in results:
        plain = results["kubespawner"]
        print("\nCasa beside plain KubeSpawner (same run; Casa / KubeSpawner, lower is better):")
        p, c = stall_stats(plain["lag_ms"]), stall_stats(casa["lag_ms"])
        print(
            f"  {'loop lag, time-wtd p99':22s} {c['weighted_p99']:7.1f} / {p['weighted_p99']:9.1f} ms = "
            f"{c['weighted_p99'] / p['weighted_p99']:6.2f}x"
        )
        for label, pct in (("login-to-ready p50", 50), ("login-to-ready p90", 90)):
            c_, p_ = percentile(casa["ready_ms"], pct), percentile(plain["ready_ms"], pct)
            print(f"  {label:22s} {c_:7.1f} / {p_:9.1f} ms = {c_ / p_ if p_ else float('inf'):6.2f}x")
    print("\nTargets (Casa):")
    met = True
    if casa:
        ok = not casa["failures"]
        met &= ok
        print(f"  failures {len(casa['failures'])} (target 0): {'met' if ok else 'NOT met'}")
    if casa and "coffea" in results:
        ratio = median(results["coffea"]["ready_ms"]) / median(casa["ready_ms"])
        ok = ratio >= 3
        met &= ok
        print(f"  login-to-ready median, Coffea-style / Casa {ratio:.1f}x (target >= 3x): {'met' if ok else 'NOT met'}")
    if casa and "kubespawner" in results:
        c_lag = stall_stats(casa["lag_ms"])["weighted_p99"]
        p_lag = stall_stats(results["kubespawner"]["lag_ms"])["weighted_p99"]
        ok = c_lag <= p_lag
        met &= ok
        print(
            f"  time-weighted loop lag p99, Casa {c_lag:.1f} ms vs plain KubeSpawner {p_lag:.1f} ms "
            f"(target: no worse): {'met' if ok else 'NOT met'}"
        )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())

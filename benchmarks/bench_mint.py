"""Per-login credential minting: Casa's full bundle vs the Coffea-Casa recipe, measured in the same run.

Casa (``CasaMinter.mint`` with every built-in kind a Coffea-Casa login gets an equivalent of: ``xcache``,
``macaroon``, ``htcondor``, ``servicex``, ``dask-tls``): a WLCG ES256 storage token, an XRootD macaroon, an
HTCondor IDTOKEN, a ServiceX access token + servicex.yaml, and three EC P-256 Dask role certificates (fresh
keys) under the user's stable, HKDF-derived CA, plus the manifest. The ``mlflow`` kind (the documented example)
is measured on its own and with the full bundle.

Coffea-Casa, at every spawn: three fresh RSA-2048 keys, a new self-signed RSA CA (its key written out
"encrypted" with a literal password) and two RSA certificates, three HS256 JWTs without ``exp``, one macaroon.

Both are timed in alternating blocks so that load from other processes on a shared machine hits both alike.
Reported: median, p90 (nearest rank), the baseline/Casa ratio, the cold cost of a user's first mint (CA key
derivation and CA certificate) and of the first mint after a hub start (key files read), and per-kind costs.

Run: .venv/bin/python benchmarks/bench_mint.py [--rounds N] [--baseline-rounds M] [--cold-users K]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.coffea_baseline import coffea_casa_mint  # noqa: E402
from tests.support import BUILT_IN_KINDS, make_minter  # noqa: E402

TARGET_WARM, TARGET_COLD = 250, 150  # issue 12: x cheaper than the Coffea-Casa recipe, warm and for a first mint


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def p90(samples: list[float]) -> float:
    s = sorted(samples)
    return s[max(0, math.ceil(0.9 * len(s)) - 1)]


def line(name: str, samples: list[float]) -> str:
    return (
        f"  {name:<44} median {statistics.median(samples) * 1e3:9.3f} ms   p90 {p90(samples) * 1e3:9.3f} ms"
        f"   n={len(samples)}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2000, help="warm Casa mints (default 2000)")
    parser.add_argument("--baseline-rounds", type=int, default=40, help="Coffea-Casa mints (default 40)")
    parser.add_argument("--cold-users", type=int, default=300, help="first mints of new users (default 300)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        # first mint after a hub start: key files read and parsed, then the user's CA derived
        starts = []
        for i in range(20):
            m = make_minter(Path(tmp) / f"start{i}")
            starts.append(timed(lambda: m.mint("alice")))

        minter = make_minter(Path(tmp) / "keys")
        minter.load_keys()
        minter.mint("warmup")
        bundle = minter.mint("alice")
        files = sorted(bundle.files)

        # alternate blocks: Casa warm, Casa cold (a new user: CA derived), Coffea-Casa
        warm, cold, base = [], [], []
        blocks = max(1, args.baseline_rounds)
        users = iter(f"user{i:06d}" for i in range(10**6))
        for b in range(blocks):
            warm += [timed(lambda: minter.mint("alice")) for _ in range(args.rounds // blocks)]
            cold += [timed(lambda: minter.mint(next(users))) for _ in range(max(1, args.cold_users // blocks))]
            base.append(timed(lambda: coffea_casa_mint(f"user{b}")))

        # per kind (warm): a minter with only that kind enabled
        per_kind = {}
        for kind in (*BUILT_IN_KINDS, "mlflow"):
            m = make_minter(Path(tmp) / f"only-{kind}", kinds=(kind,))
            m.mint("alice")
            per_kind[kind] = [timed(lambda: m.mint("alice")) for _ in range(300)]
        with_mlflow = make_minter(Path(tmp) / "with-mlflow", kinds=(*BUILT_IN_KINDS, "mlflow"))
        with_mlflow.mint("alice")
        per_kind["full bundle + mlflow"] = [timed(lambda: with_mlflow.mint("alice")) for _ in range(300)]

    med_w, med_c, med_b = (statistics.median(x) for x in (warm, cold, base))
    print(f"Casa bundle ({', '.join(BUILT_IN_KINDS)}): {len(files)} files ({', '.join(files)})")
    print("Per-login minting (wall clock, this machine, shared cores):")
    print(line("Casa full bundle, warm (re-login / refresh)", warm))
    print(line("Casa full bundle, cold user (CA derived)", cold))
    print(line("Casa first mint after hub start (keys read)", starts))
    print(line("Coffea-Casa recipe (baseline)", base))
    print(f"  ratio baseline/Casa (medians): warm {med_b / med_w:.0f}x, cold user {med_b / med_c:.0f}x")
    print(f"  cold user - warm = {1e3 * (med_c - med_w):.3f} ms of CA key derivation + CA certificate + templates")
    print("Per kind, warm (minter with only that kind enabled, includes the manifest):")
    for kind, samples in per_kind.items():
        print(line(kind, samples))
    for label, target, median in (("warm", TARGET_WARM, med_w), ("a user's first mint (cold)", TARGET_COLD, med_c)):
        ratio = med_b / median
        print(
            f"Target >={target}x cheaper than Coffea-Casa, {label}: {'met' if ratio >= target else 'NOT met'} "
            f"({ratio:.0f}x, {median * 1e3:.3f} ms)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Casa's Prometheus metrics, served with JupyterHub's own at ``<hub>/hub/metrics``.

They live in prometheus_client's default ``REGISTRY`` (the one JupyterHub's metrics handler serves) and are
created on first use (:func:`casa_metrics`), not at import: importing this module twice (a reload, two test
sessions) registers nothing twice. Every label has a small fixed set of values (outcomes, causes, credential
kinds, operations): never a user or server name, so the number of series does not grow with the users.

=========================================== ========= ================================================
name                                        type      labels
=========================================== ========= ================================================
``casa_mint_duration_seconds``              histogram ``kind`` (a credential kind, or ``bundle``: all)
``casa_mints_total``                        counter   ``outcome`` (success, refused, error)
``casa_refreshes_total``                    counter   ``outcome`` (success, refused,
                                                      provider_unavailable, error)
``casa_delivery_failures_total``            counter   ``cause`` (kubernetes_unavailable: no answer or
                                                      5xx until the retries ran out; kubernetes_refused:
                                                      403, 404, 409, 422; kubernetes_error; other)
``casa_provider_outages_total``             counter   ``during`` (login, refresh)
``casa_secret_writes_total``                counter   ``operation`` (create, replace, delete),
                                                      ``outcome`` (success, error)
``casa_revocations_total``                  counter   (none)
``casa_servers_with_credentials``           gauge     (none): running servers holding credentials
``casa_credentials_expiring_soon``          gauge     (none): of those, credentials expiring within
                                                      ``CasaAuthenticator.credential_refresh_margin``
=========================================== ========= ================================================

The two gauges are computed when Prometheus scrapes, from the hub's running servers (:func:`watch_servers`).
"""

from __future__ import annotations

import contextlib
import datetime
import threading
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

MINT_OUTCOMES = ("success", "refused", "error")
REFRESH_OUTCOMES = ("success", "refused", "provider_unavailable", "error")
DELIVERY_CAUSES = ("kubernetes_unavailable", "kubernetes_refused", "kubernetes_error", "other")
OUTAGE_DURING = ("login", "refresh")
SECRET_OPERATIONS = ("create", "replace", "delete")
# minting is ~1 ms per bundle (RSA issuer keys: ~50 ms); the upper buckets catch a starved worker thread
MINT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, float("inf"))
# a kind label value is a credential kind name: a short identifier from configuration, never user data
_MAX_KIND_LABEL = 40


@dataclass(frozen=True)
class CasaMetrics:
    mint_duration: Histogram
    mints: Counter
    refreshes: Counter
    delivery_failures: Counter
    provider_outages: Counter
    secret_writes: Counter
    revocations: Counter
    servers_with_credentials: Gauge
    expiring_soon: Gauge


def _existing(registry: CollectorRegistry, name: str):
    # prometheus_client has no public lookup by name; its registry keeps this map (stable since 0.4)
    return registry._names_to_collectors.get(name)


def _make(cls, name: str, documentation: str, registry: CollectorRegistry, **kwargs):
    found = _existing(registry, name)
    if found is not None:  # created earlier in this process (e.g. by a reloaded copy of this module)
        return found
    return cls(name, documentation, registry=registry, **kwargs)


_lock = threading.Lock()
# weak: a registry that goes away (tests make many) must not leave its metrics to a new one at the same id
_by_registry: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def casa_metrics(registry: CollectorRegistry = REGISTRY) -> CasaMetrics:
    """Casa's metric objects in ``registry`` (default: the one ``/hub/metrics`` serves), created once."""
    with _lock:
        found = _by_registry.get(registry)
        if found is not None:
            return found
        m = CasaMetrics(
            mint_duration=_make(
                Histogram,
                "casa_mint_duration_seconds",
                "Time to mint credentials, per credential kind ('bundle': a user's whole bundle)",
                registry,
                labelnames=("kind",),
                buckets=MINT_BUCKETS,
            ),
            mints=_make(
                Counter, "casa_mints", "Credential bundles minted, by outcome", registry, labelnames=("outcome",)
            ),
            refreshes=_make(
                Counter, "casa_refreshes", "Credential refreshes of running servers, by outcome", registry,
                labelnames=("outcome",),
            ),
            delivery_failures=_make(
                Counter, "casa_delivery_failures", "Credentials that could not be delivered to a server, by cause",
                registry, labelnames=("cause",),
            ),
            provider_outages=_make(
                Counter, "casa_provider_outages", "Requests to the OIDC provider that met an outage (no answer, "
                "5xx, timeout), by what the hub was doing", registry, labelnames=("during",),
            ),
            secret_writes=_make(
                Counter, "casa_secret_writes", "Writes of credential Secrets to Kubernetes, by operation and outcome",
                registry, labelnames=("operation", "outcome"),
            ),
            revocations=_make(Counter, "casa_revocations", "Users whose credentials an admin revoked", registry),
            servers_with_credentials=_make(
                Gauge, "casa_servers_with_credentials", "Running servers that hold Casa credentials", registry
            ),
            expiring_soon=_make(
                Gauge, "casa_credentials_expiring_soon",
                "Running servers whose credentials expire within the refresh margin (refresh overdue or failing)",
                registry,
            ),
        )  # fmt: skip
        # every series exists from the start (0), so that dashboards and alerts see them before the first event
        for outcome in MINT_OUTCOMES:
            m.mints.labels(outcome=outcome)
        for outcome in REFRESH_OUTCOMES:
            m.refreshes.labels(outcome=outcome)
        for cause in DELIVERY_CAUSES:
            m.delivery_failures.labels(cause=cause)
        for during in OUTAGE_DURING:
            m.provider_outages.labels(during=during)
        for op in SECRET_OPERATIONS:
            for outcome in ("success", "error"):
                m.secret_writes.labels(operation=op, outcome=outcome)
        m.mint_duration.labels(kind="bundle")
        _by_registry[registry] = m
        return m


# ------------------------------------------------------------------ recording (never raises: metrics must not
# break a login, a refresh or a stop)
def _one_of(value: str, allowed: Iterable[str], fallback: str) -> str:
    return value if value in allowed else fallback


def kind_label(kind: str) -> str:
    """A credential kind name as a label value (bounded: the configured kinds; anything odd is ``other``)."""
    ok = isinstance(kind, str) and 0 < len(kind) <= _MAX_KIND_LABEL and kind.replace("-", "").replace("_", "").isalnum()
    return kind if ok else "other"


def observe_mint(seconds: float, kind: str = "bundle", registry: CollectorRegistry = REGISTRY) -> None:
    casa_metrics(registry).mint_duration.labels(kind=kind_label(kind)).observe(max(0.0, seconds))


def count_mint(outcome: str, registry: CollectorRegistry = REGISTRY) -> None:
    casa_metrics(registry).mints.labels(outcome=_one_of(outcome, MINT_OUTCOMES, "error")).inc()


def count_refresh(outcome: str, registry: CollectorRegistry = REGISTRY) -> None:
    casa_metrics(registry).refreshes.labels(outcome=_one_of(outcome, REFRESH_OUTCOMES, "error")).inc()


def delivery_cause(error: BaseException) -> str:
    """The bounded cause of a failed delivery: what Kubernetes (or nothing) answered."""
    status = getattr(error, "status", None) or getattr(error, "status_code", None)
    if isinstance(error, TimeoutError) or status in (503, 504) or "timeout" in type(error).__name__.lower():
        return "kubernetes_unavailable"
    if status in (401, 403, 404, 409, 422):
        return "kubernetes_refused"
    if isinstance(status, int) and status >= 400:
        return "kubernetes_error"
    return "other"


def count_delivery_failure(error: BaseException, registry: CollectorRegistry = REGISTRY) -> str:
    cause = delivery_cause(error)
    casa_metrics(registry).delivery_failures.labels(cause=cause).inc()
    return cause


def count_provider_outage(during: str, registry: CollectorRegistry = REGISTRY) -> None:
    casa_metrics(registry).provider_outages.labels(during=_one_of(during, OUTAGE_DURING, "refresh")).inc()


def count_secret_write(operation: str, ok: bool, registry: CollectorRegistry = REGISTRY) -> None:
    op = _one_of(operation, SECRET_OPERATIONS, "replace")
    casa_metrics(registry).secret_writes.labels(operation=op, outcome="success" if ok else "error").inc()


def count_revocation(registry: CollectorRegistry = REGISTRY) -> None:
    casa_metrics(registry).revocations.inc()


# ------------------------------------------------------------------ the gauges, computed at scrape time
def count_servers(
    expiries: Iterable[datetime.datetime | None], now: datetime.datetime, margin: datetime.timedelta
) -> tuple[int, int]:
    """(servers holding credentials, of those expiring within ``margin`` of ``now``), from each running
    server's earliest credential expiry (None: nothing of it expires)."""
    held = soon = 0
    for expires_at in expiries:
        held += 1
        if expires_at is not None and expires_at - now <= margin:
            soon += 1
    return held, soon


def watch_servers(
    expiries: Callable[[], Iterable[datetime.datetime | None]],
    clock: Callable[[], datetime.datetime],
    margin: Callable[[], float],
    registry: CollectorRegistry = REGISTRY,
) -> None:
    """Make the two gauges read ``expiries()`` (each running server's earliest expiry) on every scrape."""
    m = casa_metrics(registry)

    def counts() -> tuple[int, int]:
        return count_servers(list(expiries()), clock(), datetime.timedelta(seconds=margin()))

    # two passes per scrape over the running servers' expiries (in memory, microseconds for hundreds)
    m.servers_with_credentials.set_function(lambda: counts()[0])
    m.expiring_soon.set_function(lambda: counts()[1])


@contextlib.contextmanager
def secret_write(operation: str, registry: CollectorRegistry = REGISTRY):
    """Count one write of a credentials Secret (``with metrics.secret_write("create"): await ...``): success when
    the block completes, error when it raises (a cancelled write is not counted)."""
    try:
        yield
    except Exception:
        count_secret_write(operation, False, registry)
        raise
    count_secret_write(operation, True, registry)

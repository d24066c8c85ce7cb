"""A big hub's start-up (casa_hub/startup_heap.py): the running servers' users held in JupyterHub's session while
it loads their spawners; CasaAuthenticator.freeze_startup_heap: collection paused while the hub loads its users, one
collection and a freeze once they are loaded, collection resumed in every case. The chart tier runs it in a real hub
(helm-values sets it; tests/z2jh checks the hub's log line)."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from types import SimpleNamespace

import pytest
from jupyterhub import orm
from sqlalchemy import event
from sqlalchemy.orm import selectinload

from casa_hub import startup_heap


@pytest.fixture
def collection_restored():
    """Whatever a test does to the garbage collector of this pytest process is undone."""
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    gc.enable() if enabled else gc.disable()


class Cycle:
    """Garbage only the cycle collector frees."""

    def __init__(self):
        self.me = self


async def test_a_hub_that_loaded_its_users_gets_its_heap_frozen_and_collection_back(collection_restored, caplog):
    app = SimpleNamespace(http_server=None, io_loop=None)
    assert startup_heap.pause_collection() is True and not gc.isenabled()
    freezing = asyncio.ensure_future(startup_heap.freeze_when_loaded(app, logging.getLogger("t"), timeout=30))
    await asyncio.sleep(0.2)
    assert not freezing.done() and not gc.isenabled()  # still loading: nothing frozen, no collection

    survivor = Cycle()  # loaded at start-up and kept: frozen
    garbage = weakref.ref(Cycle())  # start-up garbage: freed by the one collection before the freeze
    assert garbage() is not None  # collection is paused: nothing frees it yet
    app.io_loop = object()  # JupyterHub's start() began: users and spawners loaded, not listening yet
    with caplog.at_level(logging.INFO):
        frozen = await asyncio.wait_for(freezing, 10)
    assert frozen > 0 and gc.get_freeze_count() > 0 and gc.isenabled()  # (frozen objects may still die of refcount)
    assert garbage() is None  # freed, not frozen with the rest
    assert all(o is not survivor for o in gc.get_objects(generation=2))  # in the permanent generation now
    assert "Froze the hub's" in caplog.text and "start-up objects out of full garbage collections" in caplog.text


async def test_a_hub_that_never_starts_gets_collection_back_and_nothing_frozen(collection_restored, caplog):
    app = SimpleNamespace(http_server=None)
    startup_heap.pause_collection()
    with caplog.at_level(logging.WARNING):
        frozen = await startup_heap.freeze_when_loaded(app, logging.getLogger("t"), timeout=0.3)
    assert frozen is None and gc.get_freeze_count() == 0 and gc.isenabled()
    assert "its start-up heap is not frozen" in caplog.text


async def test_collection_paused_by_someone_else_stays_theirs(collection_restored):
    gc.disable()  # e.g. an admin's own extraConfig
    assert startup_heap.pause_collection() is False
    app = SimpleNamespace(http_server=object())
    await startup_heap.freeze_when_loaded(app, logging.getLogger("t"), timeout=5, resume=False)
    assert not gc.isenabled()


async def test_the_authenticator_arms_it_once_and_only_when_asked(collection_restored, tmp_path):
    from tests.hub import auth_support

    app = SimpleNamespace(http_server=None, io_loop=None, users={}, db=None)
    off = auth_support.make_authenticator(tmp_path / "off", "https://idp.invalid/")
    off.get_handlers(app)
    assert off._heap_freezer is None and gc.isenabled()
    await off.refresher.close()

    on = auth_support.make_authenticator(tmp_path / "on", "https://idp.invalid/", freeze_startup_heap=True)
    on.get_handlers(app)
    first = on._heap_freezer
    on.get_handlers(app)  # JupyterHub builds its handlers once; a second call does not pause again
    assert first is not None and on._heap_freezer is first and not gc.isenabled()
    app.http_server = object()
    assert await asyncio.wait_for(first, 10) > 0 and gc.isenabled()
    await on.refresher.close()


@pytest.fixture
def hub_db(tmp_path):
    """JupyterHub's own database: 60 users, 40 of them with a running server (20 of those a named one)."""
    url = f"sqlite:///{tmp_path}/jupyterhub.sqlite"
    db = orm.new_session_factory(url)()
    for i in range(60):
        user = orm.User(name=f"physicist{i:02d}")
        default = orm.Spawner(name="", user=user)
        if i % 3 == 0:
            default.server = orm.Server(ip="10.0.0.1", port=8888, base_url=f"/user/{user.name}/")
        if i % 3 == 1:
            named = orm.Spawner(name="gpu", user=user)
            named.server = orm.Server(ip="10.0.0.2", port=8888, base_url=f"/user/{user.name}/gpu/")
            db.add(named)
        db.add_all([user, default])
    db.commit()
    db.close()
    return lambda: orm.new_session_factory(url)()


def jupyterhubs_running_servers_query(db) -> int:
    """What JupyterHub's init_spawners (5.5 and 6.1) reads its running servers with; returns the statements sent."""
    statements = []
    event.listen(db.get_bind(), "before_cursor_execute", lambda *args: statements.append(args[2]))
    for orm_spawner in (
        db.query(orm.Spawner)
        .filter(orm.Spawner.server != None)  # noqa: E711 - SQLAlchemy's IS NOT NULL
        .options(selectinload(orm.Spawner.user), selectinload(orm.Spawner.user, orm.User._orm_spawners))
        .populate_existing()
    ):
        assert orm_spawner.user.orm_spawners
    return len(statements)


def test_holding_the_running_users_spares_jupyterhub_a_query_per_server(hub_db):
    assert jupyterhubs_running_servers_query(hub_db()) > 40  # row by row: the cost this works around

    db = hub_db()
    held = startup_heap.hold_running_users(db)
    assert sorted(u.name for u in held) == [f"physicist{i:02d}" for i in range(60) if i % 3 != 2]
    assert all(u in db for u in held)
    assert jupyterhubs_running_servers_query(db) <= 15  # a handful, whatever the number of servers


async def test_the_held_users_are_dropped_once_the_hub_has_loaded_its_spawners():
    app = SimpleNamespace(http_server=None, io_loop=None)
    held = ["a user"]
    release = asyncio.ensure_future(startup_heap.release_when_loaded(app, held, timeout=30))
    await asyncio.sleep(0.1)
    assert held and not release.done()
    app.io_loop = object()  # JupyterHub's start() began: its spawners are loaded
    await asyncio.wait_for(release, 10)
    assert held == []

    never = ["a user"]
    await asyncio.wait_for(startup_heap.release_when_loaded(SimpleNamespace(), never, timeout=0.2), 10)
    assert never == []


async def test_the_authenticator_holds_them_from_building_its_handlers_until_the_hub_is_loaded(
    hub_db, tmp_path, caplog
):
    from tests.hub import auth_support

    db = hub_db()
    app = SimpleNamespace(http_server=None, io_loop=None, users={}, db=db)
    authenticator = auth_support.make_authenticator(tmp_path, "https://idp.invalid/")
    with caplog.at_level(logging.INFO):
        authenticator.get_handlers(app)
    assert "Loaded the 40 users with a running server in one query" in caplog.text
    holding = authenticator._start_users
    assert holding is not None and not holding.done()
    assert jupyterhubs_running_servers_query(db) <= 15
    app.io_loop = object()
    await asyncio.wait_for(holding, 10)
    await authenticator.refresher.close()

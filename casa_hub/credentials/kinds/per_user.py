"""A bounded cache of per-user values that are not secrets (rendered scopes, account names, manifest entries)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable


class PerUserCache:
    """user -> value, the least recently used dropped beyond ``size``; safe to share between minting threads."""

    def __init__(self, size: int = 4096):
        self.size = size
        self._data: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, user: str, build: Callable[[str], Any]) -> Any:
        with self._lock:
            hit = self._data.get(user)
            if hit is not None:
                self._data.move_to_end(user)
                return hit
        value = build(user)  # outside the lock: two threads may build the same value, both are right
        with self._lock:
            self._data[user] = value
            if len(self._data) > self.size:
                self._data.popitem(last=False)
        return value

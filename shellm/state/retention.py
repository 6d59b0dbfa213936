"""
The background upkeep of stored keys and the request log: re-reading the
keys every second (so changes made on any node apply here) and pruning the
request log past its retention, in pool threads, never blocking the
reactor.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from shellm.state import request_log
from shellm.state.keys import KeyRing

#: How often old request-log rows are deleted.
PRUNE_INTERVAL = 3600.0


class Retention(Service):
    log = Logger()

    def __init__(self, clock: IReactorTime, ring: KeyRing, retention_days: int):
        self._clock = clock
        self._ring = ring
        self._retention = retention_days * 86400.0
        self._prune_loop = LoopingCall(self.prune)
        self._prune_loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._ring.start()
        self._prune_loop.start(PRUNE_INTERVAL, now=False)

    def stopService(self) -> None:
        self._ring.stop()
        if self._prune_loop.running:
            self._prune_loop.stop()
        super().stopService()

    def prune(self) -> Deferred[Any] | None:
        store = self._ring.keys.store
        if not store.up:
            return None
        pruning = request_log.prune(store, self._clock.seconds() - self._retention)
        pruning.addCallback(
            lambda count: self.log.info("request log pruned: {count} rows", count=count) if count else None
        )
        pruning.addErrback(lambda failure: self.log.warn("request log not pruned: {why}", why=str(failure.value)))
        return pruning

    def _pruned(self, count: int) -> None:
        if count:
            self.log.info("request log pruned: {count} rows", count=count)

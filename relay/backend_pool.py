"""The bookkeeping of ``--fallback-preconnect``'s pool, without I/O (``now`` passed in):
which pooled backend connections to keep, which to drop, how many to dial and when.
Why each bound is what it is: ``preconnect.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Seconds a pooled connection may wait for a visitor: well under the shortest idle timeout
#: sites commonly set for a connection that says nothing (``preconnect.py``).
MAX_AGE = 2.0
#: Seconds after the last site connection during which the pool still dials (what visitors
#: are owed, ``Pool.owed``; mostly a retry after a failed dial).
WARM = 60.0
#: Seconds to wait after a failed dial, doubling per failure up to BACKOFF_MAX.
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
#: Largest --fallback-preconnect: a burst of page loads, not the backend's connection cap.
MAX_SIZE = 64


_NONE: list = []  # never appended to


@dataclass(slots=True)
class Entry:
    conn: object
    address: tuple
    born: float


class Pool:
    """Which connections to keep, drop and dial; ``now`` is the loop's time."""

    def __init__(self, size: int, max_age: float | None = None, warm: float | None = None) -> None:
        self.size = size
        self.max_age = MAX_AGE if max_age is None else max_age
        self.warm = WARM if warm is None else warm
        self.entries: list[Entry] = []  # oldest first
        self.dialing = 0
        self.failures = 0  # consecutive failed dials
        self.retry_at = float("-inf")
        self.last_use = float("-inf")
        #: Dials owed to visitors, at most ``size``: one per site connection while the pool is
        #: in use (``used``: the replacement of the one it took, or a miss: the next visitor's).
        #: A connection that ages out unused is not replaced, so the pool follows the visits:
        #: the backend sees at most one connection per visit more than without a pool, none
        #: for visits farther apart than ``max_age``, never a cycle for nobody.
        self.owed = 0
        self.closed = False

    def __len__(self) -> int:
        return len(self.entries)

    def used(self, now: float) -> None:
        """A site connection came: one more dial is owed (up to the pool's size) if the pool
        is in use: it holds a connection (this visitor takes it), or the previous visit came
        within ``max_age`` (a pooled connection would have served this one). A lone visit
        owes nothing: visits farther apart than that open no connection for nobody, nor do
        the dials still owed when the pool went cold (``warm``: no room to dial them then)."""
        if now - self.last_use >= self.warm:
            self.owed = 0
        if (self.entries or now - self.last_use < self.max_age) and self.owed < self.size:
            self.owed += 1
        self.last_use = now

    def pop(self, address: tuple, now: float) -> tuple[object | None, list]:
        """The freshest connection to ``address`` (None: none) and the stale ones dropped."""
        entries = self.entries
        if entries:  # on a visitor's path: the freshest is the one to check
            e = entries[-1]
            if e.address == address and now - e.born < self.max_age:
                return entries.pop().conn, _NONE
        return None, self.expire(address, now)

    def expire(self, address: tuple | None, now: float) -> list:
        """Drops (and returns) the connections too old or to another address."""
        entries = self.entries
        if not entries or (entries[0].address == address and now - entries[0].born < self.max_age):
            return _NONE  # the oldest is good, so are the others (dialed later, to the same address)
        keep, stale = [], []
        for e in self.entries:
            if e.address == address and now - e.born < self.max_age:
                keep.append(e)
            else:
                stale.append(e.conn)
                if e.address != address and address is not None and now - e.born < self.max_age:
                    self._owe()  # the name moved: replaced at the new address (an aged one is not)
        self.entries = keep
        return stale

    def dials_due(self, address: tuple | None, now: float) -> int:
        """How many dials to start now: what visitors are owed, none without an address,
        while backing off, when cold or closed; one at a time after a failure."""
        if self.closed or now - self.last_use >= self.warm:
            self.owed = 0  # forgotten: nothing would dial them (the relay's tick asks while any is owed)
            return 0
        if address is None or now < self.retry_at:
            return 0
        missing = min(self.size - len(self.entries) - self.dialing, self.owed)
        return max(0, min(missing, 1 - self.dialing) if self.failures else missing)

    def dial_started(self) -> None:
        self.dialing += 1
        self.owed = max(0, self.owed - 1)

    def dialed(self, conn: object, address: tuple, now: float, current: tuple | None = None) -> bool:
        """A dial to ``address`` connected: False if the pool no longer wants it (closed,
        full, or ``current``, where dials go now, is another address: the name moved while
        it was dialed; pooled as the freshest, it made every ``pop`` miss until the oldest aged out)."""
        self.dialing -= 1
        self.failures = 0
        self.retry_at = float("-inf")
        if self.closed or len(self.entries) >= self.size:
            return False
        if current is not None and current != address:
            self._owe()  # dialed again, to where the name is now
            return False
        self.entries.append(Entry(conn, address, now))
        return True

    def give_up(self) -> object | None:
        """The oldest connection, taken out to be closed (a visitor needs what it holds), else None."""
        return self.entries.pop(0).conn if self.entries else None

    def dial_abandoned(self) -> None:
        """A dial in flight was closed for a visitor (not a failure: no backoff)."""
        self.dialing -= 1

    def dial_failed(self, now: float) -> float:
        """A dial failed: the seconds until the next one."""
        self.dialing -= 1
        self._owe()  # still owed, after the backoff
        self.failures += 1
        delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** min(self.failures - 1, 16))
        self.retry_at = now + delay
        return delay

    def _owe(self) -> None:
        self.owed = min(self.size, self.owed + 1)

    def backend_up(self) -> None:
        """A visitor's own dial connected: the backend is back, no need to wait out the backoff."""
        self.failures = 0
        self.retry_at = float("-inf")

    def deadline(self, now: float) -> float | None:
        """When something is next due: the oldest connection's expiry, the backoff's end."""
        times = [self.entries[0].born + self.max_age] if self.entries else []
        if self.failures and not self.closed and self.retry_at > now:
            times.append(self.retry_at)
        return min(times, default=None)

    def close(self) -> list:
        """Closes the pool (until ``reopen``); returns the connections to close."""
        self.closed = True
        self.owed = 0
        conns, self.entries = [e.conn for e in self.entries], []
        return conns

    def reopen(self) -> None:
        """Open again, empty and owing nothing: the visits from now on fill it."""
        self.closed = False

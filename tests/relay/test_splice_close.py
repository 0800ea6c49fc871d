"""A splice closed with bytes still queued both ways (idle timeout, eviction, shutdown): each side
waits out its close grace with reading paused (``streams.close``), and a side whose queue drains
in that grace must not resume reading the other one."""

from __future__ import annotations

import asyncio

from relay import splice as splice_mod


class Transport(asyncio.Transport):
    """Records pause/resume; holds ``queued`` bytes until told they drained."""

    def __init__(self, queued: int) -> None:
        super().__init__()
        self.queued = queued
        self.reading = True
        self.resumed = 0
        self.closing = False

    def get_write_buffer_size(self) -> int:
        return self.queued

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True
        self.resumed += 1

    def is_closing(self) -> bool:  # as asyncio's and uvloop's: not while close() has not been called
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def get_extra_info(self, name, default=None):
        return default


async def test_a_side_that_drains_during_the_close_grace_does_not_resume_reading_the_other():
    s = splice_mod.Splice(lambda _: None, high=1024)
    client, backend = Transport(queued=4096), Transport(queued=4096)
    s.client.connection_made(client)
    s.backend.connection_made(backend)
    s.connecting = False
    s.client.pause_writing()  # both ways over the mark: each side's reading paused
    s.backend.pause_writing()
    s.close(splice_mod.IDLE_TIMEOUT)
    assert not client.reading and not backend.reading
    client.queued = 0  # the visitor took what was queued for it: its transport reports the drain
    s.client.resume_writing()
    backend.queued = 0
    s.backend.resume_writing()
    assert (client.reading, client.resumed, backend.reading, backend.resumed) == (False, 0, False, 0)
    s.abort(splice_mod.IDLE_TIMEOUT)

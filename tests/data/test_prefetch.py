import threading
import time

import numpy as np
import pytest

from zoo.data.packing import BatchIterator, PackedDataset
from zoo.data.prefetch import Prefetcher


def _iterator():
    return BatchIterator(PackedDataset(np.arange(201, dtype=np.int32), 4), 2, seed=0)


def _wait_for(condition):
    deadline = time.time() + 10
    while not condition() and time.time() < deadline:
        time.sleep(0.01)
    assert condition()


def test_state_is_the_position_after_the_batches_handed_out():
    source, plain = _iterator(), _iterator()
    with Prefetcher(source, depth=3) as feed:
        for _ in range(2):
            np.testing.assert_array_equal(next(feed)["inputs"], next(plain)["inputs"])
        _wait_for(feed._queue.full)  # 2 handed out, 3 waiting in the queue (and 1 to put)
        assert source.position >= 5
        assert feed.get_state() == {"position": 2} == plain.get_state()
    resumed = _iterator()
    resumed.set_state(feed.get_state())
    np.testing.assert_array_equal(next(resumed)["inputs"], next(plain)["inputs"])


def test_errors_reach_the_consumer_and_close_stops_the_thread():
    def convert(batch):
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        with Prefetcher(_iterator(), convert) as feed:
            next(feed)
    blocked = Prefetcher(_iterator(), depth=1)  # its thread waits on a full queue
    _wait_for(blocked._queue.full)
    blocked.close()
    assert not blocked._thread.is_alive()
    assert not any(t.name == "prefetch" for t in threading.enumerate())

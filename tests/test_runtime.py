"""runtime.built_ahead: items in order, at most workers + 1 built ahead, no more built after an early exit."""

import threading
import time

import pytest

from polypsi.runtime import builder_threads, built_ahead


class Recorder:
    """A build function that records which items were started and how far ahead of the consumer it ran."""

    def __init__(self, delay: float = 0.0):
        self.started: list[int] = []
        self.consumed = 0
        self.max_ahead = 0
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, item: int) -> int:
        with self.lock:
            self.started.append(item)
            self.max_ahead = max(self.max_ahead, len(self.started) - self.consumed)
        time.sleep(self.delay)
        return item * item


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_items_come_in_order_and_at_most_workers_plus_one_ahead(workers):
    rec = Recorder()
    out = []
    with built_ahead(rec, range(20), workers) as results:
        for r in results:
            time.sleep(0.02)  # a consumer much slower than the builders: they would run ahead without the bound
            out.append(r)
            with rec.lock:
                rec.consumed += 1
    assert out == [i * i for i in range(20)]
    assert sorted(rec.started) == list(range(20))
    # started but not yet consumed: the item in the consumer's hands and up to workers + 1 after it
    assert rec.max_ahead == (1 if workers == 0 else workers + 2)


def test_building_starts_on_entry_before_the_first_item_is_asked_for():
    rec = Recorder()
    with built_ahead(rec, range(10), 2):
        deadline = time.monotonic() + 5
        while len(rec.started) < 3 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert sorted(rec.started) == [0, 1, 2]  # workers + 1 items, and no more while nothing is consumed


def test_leaving_early_builds_no_more_and_an_error_reaches_the_caller():
    rec = Recorder(delay=0.01)
    with built_ahead(rec, range(100), 2) as results:
        assert next(results) == 0
    assert len(rec.started) <= 4  # the first item and at most workers + 1 after it; the rest never started

    def broken(item):
        if item == 3:
            raise ValueError("image 3 is unreadable")
        return item

    with pytest.raises(ValueError, match="image 3"):
        with built_ahead(broken, range(10), 2) as results:
            list(results)


def test_builder_threads_all_on_a_gpu_one_on_a_cpu():
    import torch

    assert builder_threads(torch.device("cpu"), 8) == 1
    assert builder_threads("cpu", 8) == 1
    assert builder_threads(torch.device("cuda", 0), 8) == 8
    assert builder_threads("cuda:1", 4) == 4
    assert builder_threads("cuda", 0) == 1

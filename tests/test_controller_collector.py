"""The controller keeps the cyclic GC's full passes off a big plan while its request builds."""

from __future__ import annotations

import gc
import weakref

import pytest

from distbuild.controller.collector import PlanFreezer


@pytest.fixture
def thawed():
    gc.unfreeze()
    yield
    gc.unfreeze()


class Cycle:
    def __init__(self):
        self.me = self


def test_a_big_plan_is_left_out_of_full_passes_until_its_request_ends(thawed):
    freezer = PlanFreezer(freeze_from=100)
    plan = [Cycle() for _ in range(1000)]
    freezer.planned("r1", 5000)
    assert gc.get_freeze_count() >= len(plan)
    freezer.ended("r1")
    assert gc.get_freeze_count() == 0


def test_small_requests_freeze_nothing(thawed):
    freezer = PlanFreezer(freeze_from=100)
    freezer.planned("small", 7)
    assert gc.get_freeze_count() == 0


def test_the_heap_thaws_only_when_the_last_big_request_ends(thawed):
    freezer = PlanFreezer(freeze_from=100)
    freezer.planned("r1", 5000)
    freezer.planned("r2", 200)
    freezer.planned("small", 3)
    freezer.ended("r1")
    freezer.ended("small")
    assert gc.get_freeze_count() > 0
    freezer.ended("r2")
    assert gc.get_freeze_count() == 0


def test_garbage_frozen_with_a_plan_is_collected_after_the_thaw(thawed):
    freezer = PlanFreezer(freeze_from=100)
    gc.disable()  # so that the garbage is still there when the heap is frozen
    try:
        garbage = weakref.ref(Cycle())
        freezer.planned("r1", 5000)
        gc.collect()
        assert garbage() is not None  # frozen: full passes do not look at it
        freezer.ended("r1")
        gc.collect()
        assert garbage() is None
    finally:
        gc.enable()

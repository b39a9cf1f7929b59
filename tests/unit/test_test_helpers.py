"""The suite's own helpers: the one polling loop (tests.waiting) and the hook that skips `gpu` tests."""
from __future__ import annotations

import sys
import time
import types

import pytest

from tests import conftest as root_conftest
from tests.waiting import wait_for


def test_wait_for_returns_the_first_truthy_value():
    answers = iter([None, 0, "", "ready", "later"])
    calls = []

    def predicate():
        calls.append(1)
        return next(answers)

    assert wait_for(predicate, 5, "the answer", interval_s=0) == "ready"
    assert len(calls) == 4


def test_wait_for_raises_naming_what_it_waited_for_after_the_timeout():
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"timed out after 0\.1s waiting for the flag to flip"):
        wait_for(lambda: False, 0.1, "the flag to flip", interval_s=0.02)
    assert time.monotonic() - started >= 0.1


def test_wait_for_without_raising_returns_none_after_the_timeout():
    calls = []

    def never():
        calls.append(1)
        return []

    assert wait_for(never, 0.05, "nothing", interval_s=0.01, raise_on_timeout=False) is None
    assert len(calls) >= 2  # it polled, and did not give up after the first falsy answer


def test_an_exception_from_the_predicate_ends_the_wait():
    def dead():
        raise RuntimeError("the server exited")

    with pytest.raises(RuntimeError, match="the server exited"):
        wait_for(dead, 5, "the server", raise_on_timeout=False)


class _Item:
    """What the gpu hook uses of a collected test item."""

    def __init__(self, *marks: str):
        self.marks = [getattr(pytest.mark, name).mark for name in marks]

    def get_closest_marker(self, name):
        return next((mark for mark in self.marks if mark.name == name), None)

    def add_marker(self, marker):
        self.marks.append(marker.mark)


def _skip_reasons(item: _Item) -> list[str]:
    return [mark.kwargs["reason"] for mark in item.marks if mark.name == "skip"]


def test_gpu_tests_are_skipped_without_cuda(monkeypatch):
    monkeypatch.setattr(root_conftest, "cuda_available", lambda: False)
    gpu, cpu = _Item("gpu"), _Item("integration")
    root_conftest.pytest_collection_modifyitems(None, [gpu, cpu])
    assert _skip_reasons(gpu) == ["needs CUDA; no GPU on this machine"]
    assert _skip_reasons(cpu) == []


def test_gpu_tests_run_with_cuda(monkeypatch):
    monkeypatch.setattr(root_conftest, "cuda_available", lambda: True)
    gpu = _Item("gpu")
    root_conftest.pytest_collection_modifyitems(None, [gpu])
    assert _skip_reasons(gpu) == []


def test_cuda_is_not_asked_for_when_no_gpu_test_is_collected(monkeypatch):
    def must_not_be_called():
        raise AssertionError("torch was asked about CUDA though no gpu test was collected")

    monkeypatch.setattr(root_conftest, "cuda_available", must_not_be_called)
    items = [_Item(), _Item("integration")]
    root_conftest.pytest_collection_modifyitems(None, items)
    assert [_skip_reasons(item) for item in items] == [[], []]


def test_torch_is_asked_about_cuda_once_per_session(monkeypatch):
    asked = []
    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: asked.append(1) or False))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    root_conftest.cuda_available.cache_clear()
    try:
        assert root_conftest.cuda_available() is False
        assert root_conftest.cuda_available() is False
        assert len(asked) == 1
    finally:
        root_conftest.cuda_available.cache_clear()  # the real torch answers next time

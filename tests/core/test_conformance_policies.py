"""The scheduling-policy conformance kit on the built-in policies, and on broken ones."""

from __future__ import annotations

import pytest

from llmserve.plugin_testing.scheduling import check_scheduling_policy
from llmserve.scheduler.policy import BUILTIN_POLICIES, FCFSPolicy


@pytest.mark.parametrize("name", sorted(BUILTIN_POLICIES))
def test_builtin_policies_conform(name):
    check_scheduling_policy(BUILTIN_POLICIES[name])


class NewestFirst(FCFSPolicy):
    """Starves the oldest request under a steady stream of arrivals."""

    name = "newest_first"

    def peek(self, ctx):
        return self._queue[-1]

    def pop(self, ctx):
        return self._queue.pop()


class ForgetsPrepended(FCFSPolicy):
    """Loses preempted requests."""

    name = "forgets"

    def prepend(self, request):
        pass


def test_kit_catches_starvation():
    with pytest.raises(AssertionError, match="first request waited"):
        check_scheduling_policy(NewestFirst)


def test_kit_catches_a_lost_request():
    with pytest.raises(AssertionError, match="prepend lost the request"):
        check_scheduling_policy(ForgetsPrepended)

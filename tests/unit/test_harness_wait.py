"""The tests' wait_for: a failure names what was awaited, as it stood when the wait gave up."""
from __future__ import annotations

import pytest

from tests.support.harness import wait_for


def test_a_callable_description_is_taken_at_the_failure():
    log = ["started"]

    def ready() -> bool:
        log.append("still waiting")
        return False

    with pytest.raises(AssertionError) as failed:
        wait_for(ready, 0.2, interval=0.05, what=lambda: f"the server\n{log[-1]} ({len(log) - 1} polls)")
    message = str(failed.value)
    assert message.startswith("timed out after 0.2s waiting for the server\nstill waiting")
    assert "(1 polls)" not in message  # not the state at the first poll


def test_the_predicate_is_tried_even_with_no_time_left_and_its_value_returned():
    assert wait_for(lambda: "value", 0) == "value"

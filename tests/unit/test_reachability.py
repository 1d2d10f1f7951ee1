"""Endpoints that failed lately are asked last, for a while."""

from __future__ import annotations

from core.hub.reachability import RecentFailures

HUB, MIRROR, OTHER = "https://huggingface.co", "https://hf-mirror.com", "http://192.168.1.5:8080"


def test_an_endpoint_that_failed_is_asked_last_until_it_answers_or_its_time_is_up() -> None:
    now = [0.0]
    failures = RecentFailures(remember_s=600, clock=lambda: now[0])
    assert failures.ordered([HUB, MIRROR, OTHER]) == [HUB, MIRROR, OTHER]
    failures.failed(HUB)
    assert failures.ordered([HUB, MIRROR, OTHER]) == [MIRROR, OTHER, HUB]
    failures.failed(MIRROR)
    assert failures.ordered([HUB, MIRROR, OTHER]) == [OTHER, HUB, MIRROR]  # the saved order among them
    failures.answered(MIRROR)
    assert failures.ordered([HUB, MIRROR, OTHER]) == [MIRROR, OTHER, HUB]
    now[0] = 599.0
    assert failures.ordered([HUB, MIRROR]) == [MIRROR, HUB]
    now[0] = 600.0
    assert failures.ordered([HUB, MIRROR]) == [HUB, MIRROR]

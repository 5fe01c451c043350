"""What the user is told of a broker outage: one line when it goes, one when it is back."""

from __future__ import annotations

import socket

from crm_ledger.kafka import BrokerWatch


def test_a_failure_just_after_the_restart_is_not_told_as_a_second_outage() -> None:
    said: list[str] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        watch = BrokerWatch(f"127.0.0.1:{port}", said.append, timeout_s=60)
        watch.went_away()
        watch.went_away()
        watch.is_back()
        # The broker listens again, yet a request fails: the same outage, retried, not told.
        watch.went_away()
        assert watch.down_since is not None
        watch.is_back()
        assert watch.down_since is None
    # Nothing listens any more: a real second outage is told.
    watch.went_away()
    watch.is_back()
    assert [line.split(" is ", 1)[1] for line in said] == [
        "unreachable; retrying for up to 60 s",
        "back",
        "unreachable; retrying for up to 60 s",
        "back",
    ]

"""How the PostgreSQL state store classifies its database's errors (cdc/state_pg.py): a session
the server ended is passing, whichever way the client reads it; a real failure is not."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from cdc.state_pg import _is_connection_error


@pytest.mark.parametrize(
    "exc",
    [
        psycopg.OperationalError("server closed the connection unexpectedly"),
        errors.lookup("25P03")("terminating connection due to idle-in-transaction timeout"),
        errors.lookup("57P01")("terminating connection due to administrator command"),
        errors.lookup("55P03")("canceling statement due to lock timeout"),
        errors.lookup("40001")("could not serialize access"),
    ],
)
def test_a_session_the_server_ended_or_a_cut_wait_is_passing(exc: psycopg.Error) -> None:
    assert _is_connection_error(exc)


@pytest.mark.parametrize("state", ["42P01", "23505", "42501"])
def test_a_real_failure_is_not_passing(state: str) -> None:
    assert not _is_connection_error(errors.lookup(state)("no"))

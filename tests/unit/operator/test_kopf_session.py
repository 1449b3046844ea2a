"""kopf's HTTP session: the operator's credentials, and a bounded number of connections."""

from __future__ import annotations

import kopf

from finetune_operator.handlers import EVENT_CONNECTIONS, configure, kopf_session


async def test_kopf_gets_a_session_with_the_credentials_and_a_connection_limit() -> None:
    info = kopf.ConnectionInfo(server="https://127.0.0.1:6443", scheme="Bearer", token="t0k")
    context = kopf_session(info, watches=6)
    try:
        assert context.server == "https://127.0.0.1:6443"
        assert context.aiohttp_session.headers["Authorization"] == "Bearer t0k"
        assert context.aiohttp_session.connector is not None
        assert context.aiohttp_session.connector.limit == 6 + EVENT_CONNECTIONS
    finally:
        await context.aiohttp_session.close()


def test_event_posts_never_wait_for_a_connection_inside_their_timeout() -> None:
    """kopf times a post from before it has a connection: more posting workers than
    connections would let the wait use up the timeout, and the retry duplicate the Event."""
    settings = kopf.OperatorSettings()
    configure(settings)
    assert settings.posting.worker_limit is not None
    assert 0 < settings.posting.worker_limit < EVENT_CONNECTIONS
    assert 0 < settings.posting.idle_timeout < 1
    assert settings.posting.reporting_component == "finetune-operator"

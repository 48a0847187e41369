"""Runs waiting in Gradio's queue: when a session's running event entered it, and how many it still has waiting.

Stop must also stop a run that has not started yet. Gradio's own cancelling (the Stop button's ``cancels=``) is a
separate event that only the browser triggers: an API client calling ``/stop`` reaches our handler alone, and its
queued run would start later as if nothing had happened. Gradio keeps each queued event's session and the time it
entered the queue; these functions read them, read-only, and in this one place because they are Gradio internals.
Should those change, both answer "unknown" (None, 0) and a waiting run simply runs; ``tests/test_security.py``
would then fail.

Example:
    >>> from lightcache.app.waiting import enqueued_at, waiting_count
    >>> enqueued_at(object(), "some-session"), waiting_count(object(), "some-session")
    (None, 0)
"""

from __future__ import annotations

from typing import Any, Iterable

GENERATE = "generate"


def enqueued_at(blocks: Any, session_hash: str | None, api_name: str = GENERATE) -> float | None:
    """When (``time.monotonic()``) this session's running ``api_name`` event entered the queue, or None."""
    queue = getattr(blocks, "_queue", None)
    for job in getattr(queue, "active_jobs", None) or ():
        for event in job or ():
            if _is(event, session_hash, api_name):
                return getattr(event, "enqueue_time", None)
    return None


def waiting_count(blocks: Any, session_hash: str | None, api_name: str = GENERATE) -> int:
    """How many ``api_name`` events of this session wait in the queue (not started yet)."""
    queue = getattr(blocks, "_queue", None)
    queues = getattr(queue, "event_queue_per_concurrency_id", None) or {}
    return sum(_is(event, session_hash, api_name) for events in queues.values() for event in _events(events))


def _events(event_queue: Any) -> Iterable[Any]:
    return list(getattr(event_queue, "queue", None) or ())


def _is(event: Any, session_hash: str | None, api_name: str) -> bool:
    fn = getattr(event, "fn", None)
    return session_hash is not None and getattr(event, "session_hash", None) == session_hash \
        and getattr(fn, "api_name", None) == api_name

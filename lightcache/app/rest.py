"""Plain REST calls that leave parameters out get the values the page starts with, as gradio_client gives them.

Gradio's REST route ``POST /gradio_api/call/<api_name>`` with ``{"data": [...]}`` needs every parameter: sent fewer,
it answers ``{"error": null}`` and logs a traceback. The README promises that a call with no arguments runs the
default example, so this ASGI middleware fills the parameters a call left out at the end with the form's starting
values (each component's initial value) before Gradio sees the request. Anything else passes through untouched.

Example:
    >>> import gradio as gr
    >>> from lightcache.app.rest import fill_defaults
    >>> with gr.Blocks() as demo:
    ...     a, b, out = gr.Textbox("hello"), gr.Number(3), gr.Textbox()
    ...     _ = gr.Button().click(lambda x, y: x, [a, b], out, api_name="echo")
    >>> fill_defaults(demo, "echo", b'{"data": ["hi"]}')
    b'{"data": ["hi", 3]}'
    >>> fill_defaults(demo, "echo", b'not json')
    b'not json'
"""

from __future__ import annotations

import json
import re
from typing import Any

_CALL = re.compile(r"/gradio_api/call/(?P<api_name>[A-Za-z0-9_-]+)/?$")
#: Bodies larger than this (and bodies of unknown length) pass through unread: no parameter list is that long.
MAX_BODY_BYTES = 1 << 20


class RestDefaults:
    """ASGI middleware: ``app_kwargs={"middleware": [starlette.middleware.Middleware(RestDefaults)]}``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        match = _CALL.search(scope.get("path", "")) if scope["type"] == "http" and scope.get("method") == "POST" \
            else None
        length = _content_length(scope)
        if match is None or length is None or length > MAX_BODY_BYTES or "app" not in scope:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        body = fill_defaults(scope["app"].get_blocks(), match["api_name"], body)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(dict(scope, headers=headers), replay, send)


def fill_defaults(blocks: Any, api_name: str, body: bytes) -> bytes:
    """``body`` with the trailing parameters of ``api_name`` it lacks filled with their components' initial values."""
    try:
        payload = json.loads(body)
    except ValueError:
        return body
    data = payload.get("data") if isinstance(payload, dict) else None
    fn = next((f for f in getattr(blocks, "fns", {}).values() if getattr(f, "api_name", None) == api_name), None)
    if not isinstance(data, list) or fn is None:
        return body
    parameters = [block for block in fn.inputs if not getattr(block, "skip_api", False)]
    defaults = [getattr(block, "value", None) for block in parameters[len(data):]]
    if not defaults or any(callable(value) for value in defaults):
        return body
    return json.dumps(dict(payload, data=data + defaults)).encode()


def _content_length(scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _read_body(receive) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)

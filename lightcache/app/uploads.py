"""Files in requests: the server reads only what its upload route stored, and fetches nothing.

Gradio resolves every file reference in a request's data (any ``{"path": ..., "meta": {"_type": "gradio.FileData"}}``,
in whatever field) before the app's handler runs, even with ``preprocess=False``: a URL is downloaded into its
cache, a server path is checked and copied there, and a value of the wrong shape in the Image field fails with
``{"error": null}``. So this ASGI middleware reads the JSON body of every request before Gradio does and refuses,
with a message naming the field:

* a file reference, in any field, that is a URL or lies outside Gradio's upload folder;
* in the Image field, anything but such an uploaded file's reference or nothing.

The refusal is the answer Gradio gives when an event's validator rejects an input (HTTP 422 with one entry per
input), which gradio_client reports as the failed parameter with its message and the page's client reads as a
validation error. A request body larger than
:data:`MAX_BODY_BYTES` is refused (413) rather than passed on unread. Gradio's file route would also fetch a URL
(``GET /gradio_api/file=https://...`` downloads it and streams it back): such a request is refused (403).

Example:
    >>> import gradio as gr
    >>> from lightcache.app.uploads import refusal
    >>> with gr.Blocks() as demo:
    ...     image, text = gr.Image(label="Image"), gr.Textbox(label="Prompt")
    ...     _ = gr.Button().click(lambda i, t: t, [image, text], text, api_name="run")
    >>> url = {"path": "https://example.com/x.png", "meta": {"_type": "gradio.FileData"}}
    >>> print(refusal(demo, "run", {"data": [url, "hi"]}, upload_dir="/tmp/uploads"))
    Image: only files uploaded through the page or the API's upload route are read; a URL or any other path is refused.
    >>> refusal(demo, "run", {"data": [None, "hi"]}, upload_dir="/tmp/uploads") is None
    True
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any, Iterator

#: JSON bodies larger than this are refused: no request of the app is that long, and one that was would pass unread.
MAX_BODY_BYTES = 1 << 20

NOT_AN_UPLOAD = ("only files uploaded through the page or the API's upload route are read; a URL or any other path is "
                 "refused.")
NOT_AN_IMAGE = "upload an image file (PNG, JPEG, WebP) and pass the reference the upload route returned, or nothing."

_API = re.compile(r"/gradio_api/(?:(?P<route>call/v2|call|run|api)/(?P<api_name>[A-Za-z0-9_-]+)/?|queue/join)$")
_FILE_URL = re.compile(r"/gradio_api/file[=/]https?:", re.IGNORECASE)


def uploaded_file(path: Any, upload_dir: str | Path) -> Path | None:
    """``path`` resolved, when it names an existing file inside ``upload_dir``; else None (URLs included).

    >>> uploaded_file("https://example.com/x.png", "/tmp") is None, uploaded_file("/etc/passwd", "/tmp") is None
    (True, True)
    """
    if not isinstance(path, str) or not path or "://" in path:
        return None
    root, resolved = Path(upload_dir).resolve(), Path(path).resolve()
    return resolved if root in resolved.parents and resolved.is_file() else None


def is_file_reference(value: Any) -> bool:
    """What Gradio takes for a file to resolve (``gradio_client.utils.is_file_obj_with_meta``, without its crash on
    a ``meta`` that is not an object)."""
    return (isinstance(value, dict) and isinstance(value.get("path"), str) and isinstance(value.get("meta"), dict)
            and value["meta"].get("_type") == "gradio.FileData")


def refusal(blocks: Any, api_name: str | None, payload: Any, upload_dir: str | Path) -> str | None:
    """The message refusing ``payload`` (a request body) for the event ``api_name`` (or its ``fn_index``), or None.

    It starts with the label of the field at fault ("A file" when the request's event or fields are unknown).
    """
    found = _refused_input(blocks, api_name, payload, upload_dir)
    return found[1] if found else None


def validation_response(blocks: Any, api_name: str | None, payload: Any, upload_dir: str | Path) -> dict | None:
    """The body of the 422 Gradio answers when an event's validator refuses an input: one entry per input of the
    event, the refused one invalid with its message; None when nothing is refused."""
    found = _refused_input(blocks, api_name, payload, upload_dir)
    if found is None:
        return None
    refused, message = found
    fn = _event(blocks, api_name, payload)
    if fn is None or refused is None:
        return {"detail": [_entry(False, message, "data")]}
    names = _parameter_names(fn)
    return {"detail": [_entry(block is not refused, message if block is refused else "",
                              names[i] if i < len(names) else f"parameter_{i}")
                       for i, block in enumerate(fn.inputs)]}


class UploadsOnly:
    """ASGI middleware: ``app_kwargs={"middleware": [starlette.middleware.Middleware(UploadsOnly)]}``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if scope.get("method") in ("GET", "HEAD") and _FILE_URL.search(path):
            await _respond(send, 403, {"detail": "File not allowed: this server fetches no URLs."})
            return
        if scope.get("method") != "POST" or "/gradio_api/" not in path or path.rstrip("/").endswith("/upload") \
                or _is_multipart(scope):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive, MAX_BODY_BYTES)
        if body is None:
            await _respond(send, 413, {"detail": f"Request too large: at most {MAX_BODY_BYTES} bytes."})
            return
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            payload = None  # Gradio refuses it as well
        match = _API.search(path)
        if match and match["route"] == "call/v2":
            payload = {"data": payload}  # its body is the parameters by name
        blocks = scope["app"].get_blocks() if "app" in scope else None  # without it, every file reference is checked
        from gradio.utils import get_upload_folder

        response = validation_response(blocks, match["api_name"] if match else None, payload, get_upload_folder())
        if response is not None:
            await _respond(send, 422, response)
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


# --- helpers ---------------------------------------------------------------------------------------------------------
def _refused_input(blocks: Any, api_name: str | None, payload: Any, upload_dir) -> tuple[Any, str] | None:
    """(the input component at fault or None, the message), or None when the request may pass."""
    for block, value in _inputs_and_values(blocks, api_name, payload) or ():
        label = getattr(block, "label", None) or "A file"
        if _takes_image(block) and value is not None and not is_file_reference(value):
            return block, f"{label}: {NOT_AN_IMAGE}"
        if any(uploaded_file(ref["path"], upload_dir) is None for ref in _references(value)):
            return block, f"{label}: {NOT_AN_UPLOAD}"
    # Anything outside the fields (Gradio reads other keys of a body too) is held to the same rule.
    if any(uploaded_file(ref["path"], upload_dir) is None for ref in _references(payload)):
        return None, f"A file: {NOT_AN_UPLOAD}"
    return None


def _parameter_names(fn) -> list[str]:
    """The names Gradio gives an event's parameters (as in its own validation answers)."""
    return list(getattr(fn, "input_parameter_names", None) or inspect.signature(fn.fn).parameters)


def _event(blocks: Any, api_name: str | None, payload: Any):
    """The event a request calls: by its ``fn_index`` when it has one (as Gradio chooses), else by ``api_name``."""
    fns = getattr(blocks, "fns", {})
    index = payload.get("fn_index") if isinstance(payload, dict) else None
    if isinstance(index, int) and not isinstance(index, bool):
        return fns.get(index)
    if api_name is not None:
        return next((f for f in fns.values() if getattr(f, "api_name", None) == api_name), None)
    return None


def _inputs_and_values(blocks: Any, api_name: str | None, payload: Any) -> list[tuple[Any, Any]] | None:
    """(input component, value sent for it) pairs of the request, or None when its event or data is unknown.

    Data may list every input or leave out those the API skips (the session state), as Gradio accepts; the v2 call
    route names them instead.
    """
    fn = _event(blocks, api_name, payload)
    if fn is None or not isinstance(payload, dict):
        return None
    data = payload.get("data", [])
    inputs = list(fn.inputs)
    if isinstance(data, dict):  # /call/v2/<api_name>: {"parameter_name": value, ...}
        names = _parameter_names(fn)
        pairs = [(block, data.get(name)) for block, name in zip(inputs, names)]
        return pairs if set(data) <= set(names) else None
    if not isinstance(data, list):
        return None
    if len(data) != len(inputs):
        inputs = [block for block in inputs if not getattr(block, "skip_api", False)]
    if len(data) > len(inputs):
        return None
    return list(zip(inputs, data))


def _references(value: Any) -> Iterator[dict]:
    """Every file reference inside ``value``, at any depth (iteratively: a deeply nested body must not crash here)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if is_file_reference(item):
            yield item
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _takes_image(block: Any) -> bool:
    import gradio as gr

    return isinstance(block, gr.Image)


def _entry(is_valid: bool, message: str, name: str) -> dict[str, Any]:
    return {"__type__": "validate", "is_valid": is_valid, "message": message, "parameter_name": name}


def _is_multipart(scope) -> bool:
    return any(k.lower() == b"content-type" and v.lower().startswith(b"multipart/") for k, v in scope["headers"])


async def _read_body(receive, limit: int) -> bytes | None:
    """The whole request body, or None once it passes ``limit`` bytes."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _respond(send, status: int, content: dict[str, Any]) -> None:
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

"""Issue 10: what a hostile client or a careless user tried against the served app, through its real API.

The app is served in-process on a loopback port Gradio picks, with the launch options ``python app.py`` uses
(:func:`lightcache.app.launch.launch_options`) and a recording loader that builds tiny random pipelines, so every test
can see what the server would have loaded. Each attack goes through gradio_client, Gradio's upload route or the plain
REST route, and must be refused with a clear message while nothing is loaded, fetched or cached: the loader is
never called with the attacker's model and the pipeline cache's identity does not move.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import numpy as np
import pytest
from conftest import CallGate
from gradio.utils import get_upload_folder
from gradio_client import Client

from lightcache.app import build_demo
from lightcache.app import launch as app_launch
from lightcache.app.form import FIELDS, initial_values
from lightcache.app.layout import STOPPED_BEFORE_START
from lightcache.app.outputs import OutputDirs
from lightcache.app.pipelines import PipelineCache
from lightcache.app.waiting import waiting_count
from lightcache.errors import LightcacheError
from lightcache.presets import PRESET_DIR, PROJECT_ROOT, list_presets, load_preset, model_identity
from lightcache.tiny import build_tiny_pipeline
from lightcache.video import read_mp4

SMALL = dict(steps=6, warmup=2, frames=5, height=32, width=32, tau=0.2)
VALID = f"Valid presets: {', '.join(list_presets())}."
SHIPPED_TINY = ("tiny", "lightcache/data/tiny-wan")
#: How long a test waits for the server to reach a state before giving up (a guard against hanging, not a timing).
PATIENCE_S = 120


class RecordingLoader:
    """Builds tiny random pipelines and records every (preset name, model) it is asked to load.

    ``gate`` can hold the transformer's calls (so a run is surely still going while a test acts); ``fail`` makes
    the next loads raise it; ``fail_in_run`` makes the loaded pipeline's transformer raise it.
    """

    def __init__(self):
        self.calls: list[tuple[str, str]] = []
        self.gate = CallGate()
        self.fail: Exception | None = None
        self.fail_in_run: Exception | None = None

    def __call__(self, preset, device):
        self.calls.append((preset.name, preset.model))
        if self.fail is not None:
            raise self.fail
        pipe = build_tiny_pipeline(0)
        pipe.transformer.register_forward_pre_hook(self._before_call)
        return pipe

    def _before_call(self, module, args):
        if self.fail_in_run is not None:
            raise self.fail_in_run
        self.gate(module, args)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    loader = RecordingLoader()
    cache = PipelineCache(loader=loader, device="cpu")
    outputs = tmp_path_factory.mktemp("security-outputs")
    demo = build_demo(cache, OutputDirs(outputs), defaults=SMALL)
    # No port: Gradio binds the first free one itself (and moves on if another process takes it first).
    demo.launch(prevent_thread_lock=True, quiet=True, **app_launch.launch_options(None))
    downloads = tmp_path_factory.mktemp("security-downloads")
    try:
        yield SimpleNamespace(demo=demo, loader=loader, cache=cache, url=demo.local_url, downloads=downloads)
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(app):
    return _client(app)


@pytest.fixture(scope="module")
def victim_run(app, client):
    """An ordinary visitor's default run: the shipped tiny model gets loaded and cached."""
    result = client.predict(api_name="/generate")
    assert result[0].startswith("**Done.**")
    assert app.loader.calls[-1] == SHIPPED_TINY
    return result


# --- 1. the preset field is an allow-list of names --------------------------------------------------------------
def _preset_json(**changes) -> bytes:
    data = json.loads(load_preset("tiny").path.read_text())
    for key, value in changes.items():
        if key == "limits":
            data["limits"].update(value)
        else:
            data[key] = value
    return json.dumps(data).encode()


ATTACKER_MODEL = "/tmp/attacker-weights"
UPLOADED_PRESETS = {
    "another model directory": _preset_json(name="mine", model=ATTACKER_MODEL),
    "a Hub repository of the attacker's": _preset_json(name="mine", model="attacker/wan-backdoor"),
    "the name 'tiny' over other weights": _preset_json(model=ATTACKER_MODEL),
    "limits lifted to 1024": _preset_json(name="big", limits=dict(max_height=1024, max_width=1024, max_frames=257)),
    "a value to read back": json.dumps({"name": {"db_password": "hunter2"}}).encode(),
}


@pytest.mark.parametrize("what", list(UPLOADED_PRESETS))
def test_an_uploaded_preset_is_refused_and_nothing_is_loaded(app, client, victim_run, what):
    path = _upload(app, "preset.json", UPLOADED_PRESETS[what])
    calls, identity = list(app.loader.calls), app.cache.identity
    message = _refused(client, preset=path, height=512, width=512)
    assert message.startswith("Preset: Unknown preset") and VALID in message
    _assert_reveals_nothing(message, path)
    assert "hunter2" not in message and "db_password" not in message
    assert app.loader.calls == calls and app.cache.identity == identity


@pytest.mark.parametrize("preset", [
    str(PRESET_DIR / "tiny.json"), "presets/tiny.json", "presets/tiny.json", "../presets/tiny",
    "tiny.json", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "lightcache/data/tiny-wan", "assets/tiny-wan", "/etc/passwd", "",
])
def test_paths_and_model_names_are_not_presets(app, client, victim_run, preset):
    calls, identity = list(app.loader.calls), app.cache.identity
    message = _refused(client, preset=preset)
    assert message.startswith("Preset:") and ", ".join(list_presets()) in message
    _assert_reveals_nothing(message, preset if "/" in preset else None)
    assert app.loader.calls == calls and app.cache.identity == identity


def test_no_file_existence_oracle(app, client, victim_run):
    """An existing file and a missing one get the same answer, so the preset field cannot probe the server's disk."""
    path = _upload(app, "probe.json", b"{}")
    missing = str(Path(path).with_name("missing.json"))
    assert _refused(client, preset=path) == _refused(client, preset=missing)


def test_the_size_limits_are_the_shipped_presets(app, client, victim_run):
    calls = list(app.loader.calls)
    assert "Height: height must be between 16 and 256, got 512." in _refused(client, height=512, width=512)
    assert app.loader.calls == calls


def test_an_alias_attack_leaves_later_visitors_the_shipped_model(app, client, victim_run):
    """The reproduced attack: an uploaded preset named 'tiny' over other weights, then a victim's ordinary run."""
    identity = app.cache.identity
    assert identity == model_identity(load_preset("tiny"), "cpu")
    before = client.predict(api_name="/generate")
    calls = list(app.loader.calls)
    path = _upload(app, "tiny.json", _preset_json(model=ATTACKER_MODEL))
    _refused(client, preset=path)
    _refused(client, preset="tiny.json")
    after = _client(app).predict(api_name="/generate")  # another visitor
    assert app.loader.calls == calls and app.cache.identity == identity
    np.testing.assert_array_equal(read_mp4(after[2]), read_mp4(before[2]))  # the same pipeline, run twice


# --- uploads and the file route ------------------------------------------------------------------------------------
def test_uploads_are_capped_at_what_the_app_needs(app):
    too_big = httpx.post(_api(app, "upload"), files={"files": ("big.png", b"\0" * (app_launch.MAX_UPLOAD_BYTES + 1))},
                         timeout=60)
    assert too_big.status_code == 413 and "maximum allowed size" in too_big.text
    image = httpx.post(_api(app, "upload"), files={"files": ("first-frame.png", b"\0" * 100_000)}, timeout=60)
    assert image.status_code == 200  # an image for image-to-video presets will fit


@pytest.mark.parametrize("path, content", [
    (str(PRESET_DIR / "tiny.json"), "Tiny shapes model"),
    ("presets/tiny.json", "Tiny shapes model"),
    (str(PROJECT_ROOT / "lightcache" / "data" / "tiny-wan" / "model_index.json"), "WanPipeline"),
    ("/etc/passwd", "root:"),
])
def test_the_file_route_serves_no_server_files(app, path, content):
    response = httpx.get(_api(app, f"file={path}"), timeout=30)
    assert response.status_code in (403, 404) and content not in response.text


# --- file references: only uploads are read, nothing is fetched ------------------------------------------------------
#: A host name that cannot exist (RFC 2606): the server must not even look it up.
PROBE_HOST = "lightcache-fetch-probe.invalid"
NOT_AN_UPLOAD = ("only files uploaded through the page or the API's upload route are read; a URL or any other path "
                 "is refused.")


@pytest.fixture
def lookups(monkeypatch):
    """Every host name this process resolves while the test runs (the served app runs in this process)."""
    hosts: list[str] = []
    resolve = socket.getaddrinfo

    def recording(host, *args, **kwargs):
        hosts.append(host)
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    return hosts


def _file_reference(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def _generate_data(**changes) -> list:
    """The data list of a ``/generate`` call, by position, with ``changes``."""
    values = dict(initial_values("tiny", SMALL), **changes)
    return [values[name] for name in FIELDS]


def _call(app, route: str, data: list, fn_index: int | None = None) -> tuple[int, str]:
    """A call the way each kind of client makes it; (HTTP status, what the client was told).

    ``rest``: ``POST /gradio_api/call/generate`` then its event stream (``rest-v2``: the same with the parameters
    by name, ``/gradio_api/call/v2/generate``); ``queue``: ``POST /gradio_api/queue/join``
    (the page's and gradio_client's route) then the session's stream; ``direct``: ``POST /gradio_api/run/predict``
    naming an event by ``fn_index``. A request the server accepted is followed to its end, so that whatever it
    resolves is resolved before the test looks.
    """
    session = uuid.uuid4().hex
    if route == "rest":
        route, body = "call/generate", {"data": data}
    elif route == "rest-v2":
        route, body = "call/v2/generate", dict(zip(FIELDS, data))
    elif route == "queue":
        fn_index = next(i for i, f in app.demo.fns.items() if f.api_name == "generate")
        route, body = "queue/join", {"data": data, "fn_index": fn_index, "session_hash": session}
    else:
        route, body = "run/predict", {"data": data, "fn_index": fn_index}
    # json.dumps escapes what UTF-8 cannot encode (a lone surrogate), as a JSON client may send it.
    response = httpx.post(_api(app, route), content=json.dumps(body), timeout=60,
                          headers={"content-type": "application/json"})
    if response.status_code != 200 or route == "run/predict":
        return response.status_code, response.text
    stream = (f"{route}/{response.json()['event_id']}" if route.startswith("call/")
              else f"queue/data?session_hash={session}")
    with httpx.stream("GET", _api(app, stream), timeout=PATIENCE_S) as events:
        lines = list(events.iter_lines())  # both streams end once the session has nothing more running
    return response.status_code, "\n".join(lines)


def _validation_message(text: str) -> str:
    """The refused field's message in Gradio's 422 answer (as gradio_client and the page read it)."""
    return next(e["message"] for e in json.loads(text)["detail"] if not e["is_valid"])


@pytest.mark.parametrize("route", ["rest", "rest-v2", "queue"])
def test_an_image_given_as_a_url_is_refused_and_nothing_is_fetched(app, lookups, route):
    name = f"first-frame-{uuid.uuid4().hex}.png"
    status, told = _call(app, route, _generate_data(image=_file_reference(f"https://{PROBE_HOST}/{name}")))
    assert PROBE_HOST not in lookups, "the server tried to fetch the URL"
    assert not list(Path(get_upload_folder()).rglob(name)), "the URL's file is in Gradio's cache"
    assert status == 422 and _validation_message(told) == f"{FIELDS['image']}: {NOT_AN_UPLOAD}"


def test_no_event_and_no_field_resolves_a_url(app, lookups):
    """Gradio resolves file references in any field of any event: the Prompt of ``/generate``, and the Steps value
    of the page's own warm-up follower, which the direct route runs by its index."""
    status, told = _call(app, "queue", _generate_data(prompt=_file_reference(f"https://{PROBE_HOST}/prompt.txt")))
    assert status == 422 and _validation_message(told) == f"{FIELDS['prompt']}: {NOT_AN_UPLOAD}"
    steps_id = next(c["id"] for c in app.demo.config["components"] if c.get("props", {}).get("label") == "Steps")
    follower = next(i for i, fn in app.demo.fns.items() if any(t == (steps_id, "change") for t in fn.targets))
    status, told = _call(app, "direct", [_file_reference(f"https://{PROBE_HOST}/steps.json"), 2], fn_index=follower)
    assert status == 422 and _validation_message(told) == f"{FIELDS['steps']}: {NOT_AN_UPLOAD}"
    response = httpx.get(_api(app, f"file=https://{PROBE_HOST}/x.png"), timeout=30)  # Gradio's file route
    assert response.status_code == 403
    assert PROBE_HOST not in lookups


def test_a_server_file_named_in_the_image_field_is_not_copied(app, lookups, tmp_path):
    secret = tmp_path / f"secret-{uuid.uuid4().hex}.png"
    secret.write_bytes(b"not for visitors")
    for route in ("rest", "queue"):
        status, told = _call(app, route, _generate_data(image=_file_reference(str(secret))))
        assert status == 422 and _validation_message(told) == f"{FIELDS['image']}: {NOT_AN_UPLOAD}"
    assert not list(Path(get_upload_folder()).rglob(secret.name)), "the server file was copied into Gradio's cache"


@pytest.mark.parametrize("value", ["/etc/passwd", "", ["a", "b"], 5, {"path": "/etc/passwd"}])
def test_an_image_field_of_another_shape_gets_the_apps_message(app, client, value):
    message = _refused(client, image=value)
    assert message.endswith(f"{FIELDS['image']}: upload an image file (PNG, JPEG, WebP) and pass the reference the "
                            "upload route returned, or nothing.")
    status, told = _call(app, "rest", _generate_data(image=value))
    assert status == 422 and _validation_message(told).startswith(f"{FIELDS['image']}: upload an image file")


def test_an_uploaded_image_passes_the_check_and_reaches_the_form(app, client):
    """The check lets the upload route's own references through: the form reads the file (and, for the text-to-video
    tiny preset, refuses an image)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buffer, format="PNG")
    path = _upload(app, "first-frame.png", buffer.getvalue())
    message = _refused(client, image=_file_reference(path))
    assert message == f"{FIELDS['image']}: Preset 'tiny' is text-to-video only; it takes no image."


def test_a_prompt_with_a_lone_surrogate_is_refused_by_name(app):
    status, told = _call(app, "rest", _generate_data(prompt="a red \ud800 circle"))
    assert status == 200 and "event: error" in told
    assert ("Prompt: prompt holds a character that is not valid text (U+D800, a lone surrogate, at position 6); "
            "remove it.") in told


def test_a_request_too_large_to_check_is_refused(app):
    response = httpx.post(_api(app, "call/generate"), json={"data": ["x" * (2 << 20)]}, timeout=60)
    assert response.status_code == 413


# --- error texts ----------------------------------------------------------------------------------------------------
def test_a_failing_run_shows_no_server_paths(app, client, victim_run):
    app.loader.fail_in_run = FileNotFoundError(2, "No such file or directory", "/srv/secret/cache/blob")
    try:
        message = _refused(client)
    finally:
        app.loader.fail_in_run = None
    assert message == "The run failed (FileNotFoundError); the server's log has the details."


def test_a_model_that_fails_to_load_shows_no_paths_or_cli_flags(app, client, victim_run):
    app.cache.clear()
    app.loader.fail = LightcacheError("Could not load the model in '/srv/secret/models/wan': no weights. You can "
                                      "also pass a local directory with --model.")
    try:
        message = _refused(client)
    finally:
        app.loader.fail = None
    assert message.startswith("Preset: the model of 'tiny' could not be loaded on this server")
    assert "/srv" not in message and "--" not in message
    assert client.predict(api_name="/generate")[0].startswith("**Done.**")  # loads again once the model is back


# --- Stop, REST, warm-up ---------------------------------------------------------------------------------------------
def test_stop_while_ones_own_run_waits_in_the_queue_keeps_it_from_starting(app, victim_run):
    first, second = _client(app), _client(app)
    app.loader.gate.hold(after_calls=2)  # the first run's step 1 runs, then it waits until both have pressed Stop
    try:
        running = first.submit(steps=100, warmup=2, api_name="/generate")
        _wait_for(lambda: any("step 1 /" in str(u[0]) for u in running.outputs()), "the first run to start")
        waiting = second.submit(prompt="a blue square moving down", api_name="/generate")
        _wait_for(lambda: waiting_count(app.demo, second.session_hash) == 1, "the second run to be queued")
        assert second.predict(api_name="/stop") == "**Stopped.** Your run waiting in the queue will not start."
        assert "Stopped" in first.predict(api_name="/stop")
    finally:
        app.loader.gate.release()
    result = waiting.result(timeout=PATIENCE_S)
    running.result(timeout=PATIENCE_S)
    assert result[0] == STOPPED_BEFORE_START
    assert not any("step" in str(update[0]) for update in waiting.outputs()), "the stopped run computed steps"
    assert second.predict(api_name="/generate")[0].startswith("**Done.**"), "a later run of that visitor runs"


def test_a_rest_call_without_data_runs_the_default(app, victim_run):
    events = _rest_call(app, [])
    assert events[-1][0] == "complete" and json.loads(events[-1][1])[0].startswith("**Done.**")
    bad = _rest_call(app, ["nope"])
    assert bad[-1][0] == "error" and "Preset: Unknown preset 'nope'. " + VALID in bad[-1][1]


def test_the_warmup_slider_follows_steps(app, client, victim_run):
    slider = next(c for c in app.demo.config["components"] if c.get("props", {}).get("label") == "Warm-up steps")
    assert slider["props"]["maximum"] == SMALL["steps"] - 1
    steps_id = next(c["id"] for c in app.demo.config["components"] if c.get("props", {}).get("label") == "Steps")
    follow = next(fn for fn in app.demo.fns.values()
                  if any(t[0] == steps_id and t[1] == "change" for t in fn.targets) and slider["id"] in
                  [o._id for o in fn.outputs])
    update = follow.fn(3, 4)
    assert (update["maximum"], update["value"]) == (2, 2)
    assert follow.fn(50, 4)["value"] == 4
    assert "Warm-up steps: warmup must be between 0 and 2, got 4." in _refused(client, steps=3, warmup=4)
    plain = client.predict(steps=3, warmup=4, easycache=False, api_name="/generate")  # the warm-up does not apply
    assert plain[0].startswith("**Done.**")


# --- python app.py: port --------------------------------------------------------------------------------------------
def test_a_port_in_use_ends_the_app_with_one_line(monkeypatch, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setenv("GRADIO_SERVER_PORT", str(port))
        with gr.Blocks() as demo:
            gr.Markdown("x")
        try:
            with pytest.raises(SystemExit) as info:
                app_launch.main(demo, [])
        finally:
            demo.close()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: port {port} is already in use (another app is serving there?); stop it or set " \
                  "GRADIO_SERVER_PORT to a free port.\n"


@pytest.mark.parametrize("value", ["abc", "70000", "-1"])
def test_a_bad_gradio_server_port_is_one_line(value):
    env = dict(os.environ, GRADIO_SERVER_PORT=value)
    proc = subprocess.run([sys.executable, "app.py"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=PATIENCE_S)
    assert proc.returncode == 2
    assert proc.stderr == f"error: GRADIO_SERVER_PORT must be a port number between 1 and 65535, got '{value}'.\n"


# --- helpers ---------------------------------------------------------------------------------------------------------
def _client(app) -> Client:
    return Client(app.url, verbose=False, download_files=str(app.downloads))


def _api(app, route: str) -> str:
    return f"{app.url.rstrip('/')}/gradio_api/{route}"


def _upload(app, name: str, content: bytes) -> str:
    """Gradio's anonymous upload route: returns the server path of the stored file, as it does for anyone."""
    response = httpx.post(_api(app, "upload"), files={"files": (name, content)}, timeout=60)
    response.raise_for_status()
    return response.json()[0]


def _refused(client: Client, **changes) -> str:
    with pytest.raises(Exception) as info:
        client.predict(**changes, api_name="/generate")
    return str(info.value)


def _assert_reveals_nothing(message: str, path: str | None) -> None:
    assert str(PROJECT_ROOT) not in message and "/tmp" not in message and "--" not in message
    if path:
        assert path not in message


def _rest_call(app, data: list) -> list[tuple[str, str]]:
    """``POST /gradio_api/call/generate`` then its event stream, as (event, data) pairs."""
    event_id = httpx.post(_api(app, "call/generate"), json={"data": data}, timeout=60).json()["event_id"]
    events, name = [], None
    with httpx.stream("GET", _api(app, f"call/generate/{event_id}"), timeout=PATIENCE_S) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((name, line[len("data: "):]))
    return events


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def test_the_pipeline_cache_is_keyed_by_what_is_loaded_not_by_name():
    loaded = []
    cache = PipelineCache(loader=lambda preset, device: loaded.append(preset.model) or object(), device="cpu",
                          warm_up=False)
    tiny = load_preset("tiny")
    with cache.use(tiny):
        pass
    with cache.use(dataclasses.replace(tiny, name="renamed")):  # the same weights under another name: no reload
        pass
    with cache.use(dataclasses.replace(tiny, model=str(PROJECT_ROOT / "assets"))):  # 'tiny' over other weights
        pass
    assert loaded == ["lightcache/data/tiny-wan", str(PROJECT_ROOT / "assets")]
    assert not cache.holds(tiny) and cache.identity == model_identity(
        dataclasses.replace(tiny, model=str(PROJECT_ROOT / "assets")), "cpu")

"""A small client for a running ComfyUI (its HTTP API and /ws websocket), on aiohttp, which ComfyUI installs.

Works with ComfyUI 2024-03 and 0.3.x: upload an image (``POST /upload/image``), queue an API-format prompt
(``POST /prompt``), follow it over ``/ws?clientId=...`` (``executing``, ``progress``, ``execution_cached``,
``execution_error``...), read ``/history/<id>`` and download outputs (``GET /view``).
"""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

import aiohttp

logger = logging.getLogger(__name__)

# Connecting, and any one read of an HTTP answer (uploads, downloads); the websocket has no read limit.
TIMEOUT = aiohttp.ClientTimeout(total=None, connect=15, sock_read=300)


class ComfyError(Exception):
    """A failure to report to the user as is: ComfyUI's own message, or why ComfyUI could not be reached."""


class PromptRejected(ComfyError):
    """ComfyUI refused to queue the prompt (validation: its node_errors)."""


class ExecutionFailed(ComfyError):
    """The prompt was queued but failed or was interrupted while running."""


@dataclass(frozen=True)
class Event:
    """What the server reported about our prompt: kind is "node" (a node started), "cached" (nodes skipped),
    "progress" (value of max steps in `node`), or "done"."""
    kind: str
    node: str | None = None
    value: int = 0
    max: int = 0
    nodes: tuple[str, ...] = ()


def _node_label(prompt: dict, node_id: str | None) -> str:
    node = prompt.get(str(node_id), {}) if node_id is not None else {}
    title = node.get("_meta", {}).get("title") or node.get("class_type") or "?"
    return f"node {node_id} ({title})" if node.get("class_type") in (None, title) else \
        f"node {node_id} ({title}, {node['class_type']})"


def format_rejection(body: dict, prompt: dict) -> str:
    """ComfyUI's answer to a refused POST /prompt as readable lines: the error, then every node's errors."""
    error = body.get("error")
    if isinstance(error, dict):
        head = error.get("message") or error.get("type") or "the prompt was rejected"
        if error.get("details"):
            head += f": {error['details']}"
    else:
        head = str(error or "the prompt was rejected")
    lines = [f"ComfyUI rejected the workflow: {head}"]
    for node_id, info in (body.get("node_errors") or {}).items():
        for e in info.get("errors", []):
            detail = f" ({e['details']})" if e.get("details") else ""
            lines.append(f"  {_node_label(prompt, node_id)}: {e.get('message', e)}{detail}")
    return "\n".join(lines)


def format_execution_error(data: dict, prompt: dict) -> str:
    """An ``execution_error`` message (or history status message) as one readable block."""
    where = _node_label(prompt, data.get("node_id"))
    kind = data.get("exception_type") or "error"
    message = str(data.get("exception_message") or "").strip()
    return f"ComfyUI failed in {where}: {kind}: {message}"


def websocket_url(server: str, client_id: str) -> str:
    parts = urlsplit(server)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", f"clientId={client_id}", ""))


class ComfyClient:
    """One client id per instance, so the server sends this client the messages of its own prompts."""

    def __init__(self, server: str, session: aiohttp.ClientSession, client_id: str | None = None):
        if not server.startswith(("http://", "https://")):
            raise ComfyError(f"server URL {server!r} needs a scheme, e.g. http://127.0.0.1:8188")
        self.server = server.rstrip("/")
        self.session = session
        self.client_id = client_id or f"fsupir-cli-{uuid.uuid4().hex}"

    async def _json(self, method: str, route: str, **kwargs):
        try:
            async with self.session.request(method, self.server + route, **kwargs) as response:
                text = await response.text()
                if response.status >= 400:
                    raise _HTTPStatus(response.status, text)
                return json.loads(text) if text else None
        except aiohttp.ClientConnectionError as e:
            raise ComfyError(f"cannot reach ComfyUI at {self.server} ({e}); is it running? Start it, or pass "
                             "--server with its address") from None

    async def check(self) -> dict:
        """The server's /system_stats (fails with a clear message when nothing answers)."""
        try:
            return await self._json("GET", "/system_stats")
        except _HTTPStatus as e:
            raise ComfyError(f"{self.server} does not look like ComfyUI: GET /system_stats answered "
                             f"HTTP {e.status}") from None

    async def upload_image(self, path: Path, subfolder: str = "", name: str | None = None) -> str:
        """Uploads `path` into ComfyUI's input folder as `name` (default: its own name), replacing a file of that
        name; returns the name Load Image takes."""
        form = aiohttp.FormData()
        form.add_field("image", path.read_bytes(), filename=name or path.name,
                       content_type="application/octet-stream")
        form.add_field("type", "input")
        form.add_field("subfolder", subfolder)
        form.add_field("overwrite", "true")
        try:
            answer = await self._json("POST", "/upload/image", data=form)
        except _HTTPStatus as e:
            raise ComfyError(f"ComfyUI refused the upload of {path}: HTTP {e.status} {e.text[:300]}") from None
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]

    async def queue(self, prompt: dict) -> str:
        try:
            answer = await self._json("POST", "/prompt", json={"prompt": prompt, "client_id": self.client_id})
        except _HTTPStatus as e:
            try:
                body = json.loads(e.text)
            except json.JSONDecodeError:
                body = {"error": f"HTTP {e.status}: {e.text[:500]}"}
            raise PromptRejected(format_rejection(body, prompt)) from None
        if answer.get("node_errors"):
            raise PromptRejected(format_rejection(answer, prompt))
        return answer["prompt_id"]

    async def history(self, prompt_id: str) -> dict | None:
        return (await self._json("GET", f"/history/{prompt_id}") or {}).get(prompt_id)

    async def download(self, ref: dict) -> bytes:
        params = {k: ref.get(k, "") for k in ("filename", "subfolder", "type")}
        try:
            async with self.session.get(self.server + "/view", params=params) as response:
                if response.status >= 400:
                    raise ComfyError(f"cannot download {ref.get('filename')}: HTTP {response.status}")
                return await response.read()
        except aiohttp.ClientConnectionError as e:
            raise ComfyError(f"lost ComfyUI at {self.server} while downloading ({e})") from None

    async def run(self, prompt: dict, on_event: Callable[[Event], None] = lambda e: None) -> dict:
        """Queues `prompt`, follows it to the end and returns its /history entry; ExecutionFailed with ComfyUI's
        message when it fails."""
        try:
            ws = await self.session.ws_connect(websocket_url(self.server, self.client_id), heartbeat=30)
        except aiohttp.ClientError as e:
            raise ComfyError(f"cannot open ComfyUI's websocket at {self.server}/ws ({e})") from None
        async with ws:
            prompt_id = await self.queue(prompt)
            logger.debug("queued prompt %s", prompt_id)
            await self._follow(ws, prompt_id, prompt, on_event)
        entry = await self._finished_entry(prompt_id)
        status = entry.get("status") or {}
        if status.get("status_str", "success") != "success":
            raise ExecutionFailed(_history_error(status, prompt))
        on_event(Event("done"))
        return entry

    async def _follow(self, ws, prompt_id: str, prompt: dict, on_event: Callable[[Event], None]) -> None:
        running = False
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue  # binary previews
            try:
                event = json.loads(message.data)
            except json.JSONDecodeError:
                continue
            kind, data = event.get("type"), event.get("data") or {}
            ours = data.get("prompt_id") in (None, prompt_id)
            if kind == "execution_start" and data.get("prompt_id") == prompt_id:
                running = True
            elif kind == "execution_cached" and data.get("prompt_id") == prompt_id:
                on_event(Event("cached", nodes=tuple(str(n) for n in data.get("nodes", []))))
            elif kind == "executing" and data.get("prompt_id") == prompt_id:
                running = True
                if data.get("node") is None:
                    return
                on_event(Event("node", node=str(data["node"])))
            elif kind == "progress" and ours and running:
                on_event(Event("progress", node=data.get("node"), value=int(data.get("value", 0)),
                               max=int(data.get("max", 0))))
            elif kind == "execution_success" and data.get("prompt_id") == prompt_id:
                return
            elif kind == "execution_error" and data.get("prompt_id") == prompt_id:
                raise ExecutionFailed(format_execution_error(data, prompt))
            elif kind == "execution_interrupted" and data.get("prompt_id") == prompt_id:
                raise ExecutionFailed(f"the run was interrupted in {_node_label(prompt, data.get('node_id'))}")
        logger.warning("ComfyUI closed the websocket; waiting for the result in /history")

    async def _finished_entry(self, prompt_id: str, poll_s: float = 0.5) -> dict:
        """The /history entry, which 0.3.x writes just after reporting success."""
        while True:
            entry = await self.history(prompt_id)
            if entry is not None:
                return entry
            await asyncio.sleep(poll_s)


def _history_error(status: dict, prompt: dict) -> str:
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            return format_execution_error(data, prompt)
        if kind == "execution_interrupted":
            return f"the run was interrupted in {_node_label(prompt, data.get('node_id'))}"
    return f"the run ended with status {status.get('status_str')!r}"


class _HTTPStatus(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(status, text)
        self.status, self.text = status, text

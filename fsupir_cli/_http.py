"""The few ComfyUI HTTP calls the benchmark needs, on the standard library (``urllib``): upload an input image,
queue an API prompt, wait for it in /history, download an output image. Routes as ComfyUI's server.py serves them
(/upload/image, /prompt, /history/{id}, /view)."""
from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)


class ComfyError(RuntimeError):
    """The server refused a prompt or reported an execution error; the message carries its words."""


class ComfyHTTP:
    def __init__(self, base_url: str, timeout: float = 60.0):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"server URL {base_url!r} needs a scheme, e.g. http://127.0.0.1:8188")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    def _request(self, route: str, data: bytes | None = None, headers: dict | None = None) -> bytes:
        request = urllib.request.Request(self.base_url + route, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            body = error.read().decode("utf-8", "replace")
            raise ComfyError(f"{route}: HTTP {error.code}: {_explain(body)}") from None
        except urllib.error.URLError as error:
            raise ComfyError(f"cannot reach ComfyUI at {self.base_url} ({error.reason}): is it running?") from None

    def get_json(self, route: str):
        return json.loads(self._request(route))

    def post_json(self, route: str, payload) -> dict:
        return json.loads(self._request(route, json.dumps(payload).encode(), {"Content-Type": "application/json"}))

    def upload_image(self, path: Path, name: str | None = None) -> str:
        """Uploads into ComfyUI's input folder (overwriting); returns the value for LoadImage's `image`."""
        boundary = uuid.uuid4().hex
        name = name or path.name
        parts = [(b'Content-Disposition: form-data; name="overwrite"', b"true"),
                 (f'Content-Disposition: form-data; name="image"; filename="{name}"\r\n'
                  "Content-Type: image/png".encode(), path.read_bytes())]
        body = b"".join(b"--" + boundary.encode() + b"\r\n" + head + b"\r\n\r\n" + content + b"\r\n"
                        for head, content in parts) + b"--" + boundary.encode() + b"--\r\n"
        reply = json.loads(self._request("/upload/image", body,
                                         {"Content-Type": f"multipart/form-data; boundary={boundary}"}))
        return f"{reply['subfolder']}/{reply['name']}" if reply.get("subfolder") else reply["name"]

    def queue(self, prompt: dict) -> str:
        return self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600.0, poll: float = 0.25) -> dict:
        """The prompt's /history entry once it has finished; ComfyError if it failed or took over `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None:
                status = entry.get("status") or {}
                if status.get("status_str") == "error":
                    raise ComfyError(f"prompt {prompt_id} failed: {_execution_error(status)}")
                if status.get("completed", True):
                    return entry
            time.sleep(poll)
        raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def download(self, image: dict) -> bytes:
        query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
        return self._request(f"/view?{query}")


def output_images(entry: dict, prefer_nodes: list[str]) -> list[dict]:
    """Image records of a /history entry: those of `prefer_nodes` (e.g. the SaveImage nodes) first."""
    outputs = entry.get("outputs", {})
    order = [n for n in prefer_nodes if n in outputs] + [n for n in outputs if n not in prefer_nodes]
    return [img for n in order for img in outputs[n].get("images", [])]


def _explain(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:500]
    error = data.get("error", data)
    text = error.get("message", str(error)) if isinstance(error, dict) else str(error)
    for node_id, info in (data.get("node_errors") or {}).items():
        for e in info.get("errors", []):
            text += f"; node {node_id} ({info.get('class_type')}): {e.get('message')} {e.get('details', '')}".rstrip()
    return text


def _execution_error(status: dict) -> str:
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            return f"{data.get('node_type')} (node {data.get('node_id')}): {data.get('exception_message', '').strip()}"
    return "execution error (see the ComfyUI log)"

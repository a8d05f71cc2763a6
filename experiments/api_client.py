"""A small client of the HTTP API (serving/router.py), used by the demo: classify images in
batches, add labelled images, forget items. Errors surface as the API's JSON error."""
from __future__ import annotations

import base64
from dataclasses import dataclass

import requests

from pipelines.records import ImageRecord


class ApiRequestError(RuntimeError):
    """The server answered 4xx/5xx; the message carries its ``{"error", "field"}`` body."""


@dataclass
class MemoryClient:
    url: str  # http://127.0.0.1:PORT
    token: str = ""
    batch: int = 64  # images per request (the server accepts up to max_batch)
    timeout_s: float = 120.0

    def _call(self, method: str, path: str, body: dict | None = None, mutate: bool = False) -> dict:
        headers = {"Authorization": f"Bearer {self.token}"} if mutate else {}
        response = requests.request(method, self.url + path, json=body, headers=headers, timeout=self.timeout_s)
        if response.status_code >= 400:
            raise ApiRequestError(f"{method} {path}: HTTP {response.status_code} {response.text[:300]}")
        return response.json()

    def health(self) -> dict:
        return self._call("GET", "/healthz")

    def memory(self) -> dict:
        return self._call("GET", "/v1/memory")

    def classify(self, records: list[ImageRecord], k: int = 100, explain: bool = True) -> list[dict]:
        """One answer per image (decision, confidence, neighbours), in order."""
        answers = []
        for start in range(0, len(records), self.batch):
            chunk = records[start:start + self.batch]
            body = {"queries": [{"image_base64": base64.b64encode(r.data).decode(), "k": k, "explain": explain}
                                for r in chunk]}
            answers += self._call("POST", "/v1/classify/batch", body)["results"]
        return answers

    def add(self, records: list[ImageRecord]) -> list[dict]:
        """Remember labelled images (each request publishes one new version)."""
        answers = []
        for start in range(0, len(records), self.batch):
            items = [{"key": r.key, "label": r.label, "source": r.source,
                      "image_base64": base64.b64encode(r.data).decode()} for r in records[start:start + self.batch]]
            answers.append(self._call("POST", "/v1/memory/items", {"items": items}, mutate=True))
        return answers

    def forget(self, keys: list[str]) -> dict:
        return self._call("DELETE", "/v1/memory/items", {"keys": keys}, mutate=True)

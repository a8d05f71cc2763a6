"""A Python client of the memory's HTTP API (serving/router.py), as pymilvus or clip-retrieval's
``ClipClient`` are for theirs: typed results, batching, retries, errors as exceptions.

    from vmem.client import MemoryClient

    client = MemoryClient("http://127.0.0.1:8000", token="admin-token")
    answer = client.classify("cat.jpg", k=50)          # a path, image bytes or an embedding
    print(answer.label, answer.confidence, answer.neighbours[0].source)
    client.forget(ids=[answer.neighbours[0].id])       # unlearn the top evidence
    client.neighbors(Text("a red running shoe"))       # text -> images (open_clip memories)
    client.zero_shot("cat.jpg", ["cat", "dog"])        # CLIP zero-shot next to the kNN vote

Retries: a 503 (the server sheds load, or a version it was asked for is not served yet) and a
connection error are retried with exponential backoff, honouring ``Retry-After`` (urllib3
``Retry``). Every other 4xx/5xx raises ``ApiError`` carrying the API's ``field``. Only this
module, ``requests``, numpy and ``serving.decision`` (the evidence record, numpy only) are
imported: no torch, Ray or FAISS.
"""
from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence, Union

import numpy as np
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from serving.decision import Neighbour  # the evidence record (numpy only); vote None: no vote



@dataclass(frozen=True)
class Text:
    """A text query (open_clip memories only): its CLIP text embedding searches the images."""

    text: str


Query = Union[bytes, str, os.PathLike, np.ndarray, Sequence[float], Text]


class ApiError(RuntimeError):
    """The server refused a request: ``status`` (HTTP), ``field`` (the request field at fault,
    e.g. ``k`` or ``queries.3.image_base64``) and ``message``, from its ``{"error", "field"}``
    body."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"HTTP {status} ({field}): {message}")
        self.status, self.field, self.message = status, field, message


@dataclass(frozen=True)
class Answer:
    """An answer to one query. ``label``/``confidence``/``scores`` are set by ``classify``
    (``label`` is "unknown" when the evidence is weak) and None for ``neighbors``."""

    version: str  # the index version that answered
    k: int
    neighbours: list[Neighbour]
    shards_answered: list[int]
    shards_total: int
    partial: bool  # some shard did not answer in time
    label: str | None = None
    confidence: float | None = None
    scores: dict[str, float] = field(default_factory=dict)  # per-class vote sums
    aggregator: str | None = None
    parameter: float | None = None
    # shard -> the older version it answered from, because a file of ``version`` failed to
    # load (stale: it holds no item deleted since; /healthz says why)
    shards_stale: dict[int, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: dict) -> "Answer":
        neighbours = [Neighbour(int(n["id"]), n["key"], n["source"], n["label"], float(n["distance"]),
                                int(n["rank"]), float(n["item_weight"]), n.get("vote"))
                      for n in body.get("neighbours", [])]
        return cls(body["version"], int(body["k"]), neighbours, list(body["shards_answered"]),
                   int(body["shards_total"]), bool(body["partial"]), body.get("label"),
                   body.get("confidence"), dict(body.get("scores", {})), body.get("aggregator"),
                   body.get("parameter"),
                   {int(s["shard"]): s["version"] for s in body.get("shards_stale", [])})


@dataclass(frozen=True)
class ZeroShot:
    """CLIP zero-shot over the given labels (``scores``: probability per label, summing to 1)
    next to the memory's kNN answer on the same image; ``agree``: the two labels are equal."""

    label: str
    scores: dict[str, float]
    templates: list[str]
    logit_scale: float
    memory: Answer
    agree: bool

    @classmethod
    def from_json(cls, body: dict) -> "ZeroShot":
        return cls(body["label"], dict(body["scores"]), list(body["templates"]),
                   float(body["logit_scale"]), Answer.from_json(body["memory"]), bool(body["agree"]))


@dataclass(frozen=True)
class Edit:
    """The result of an edit: the version it published (pass it as ``min_version`` to read
    your writes; every replica already serves it when the call returns) and its details."""

    version: str
    size: int  # items in the memory after the edit
    details: dict


@dataclass(frozen=True)
class Version:
    """One row of the version history (``vmem index log``)."""

    version: str
    latest: bool
    parent: str | None
    operation: str
    count: int
    shards: int
    created: str


@dataclass
class QueryOptions:
    """Per-request options (serving/models.py ``QueryRequest``); None: the server's default."""

    k: int | None = None
    aggregator: str | None = None  # plurality | distance | softmax | rank
    parameter: float | None = None
    unknown_below: float | None = None
    nprobe: int | None = None
    rerank: str | None = None
    explain: bool = True
    min_version: str | None = None

    def fields(self) -> dict:
        return {name: value for name, value in vars(self).items() if value is not None}


class MemoryClient:
    """A client of one ``vmem serve`` endpoint.

    ``url``: e.g. ``http://127.0.0.1:8000``. ``token``: sent as a bearer token (a read token
    for queries, the admin token for edits). ``batch``: queries or items per request (the
    server accepts up to its ``max_batch``). ``retries``/``backoff_s``: for 503 and connection
    errors. ``timeout_s``: per HTTP request."""

    def __init__(self, url: str, token: str | None = None, batch: int = 64, retries: int = 5,
                 backoff_s: float = 0.2, timeout_s: float = 120.0) -> None:
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self.url, self.batch, self.timeout_s = url.rstrip("/"), batch, timeout_s
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        # POST and DELETE included: a 503 means the request was not carried out (shed, or the
        # writer busy), so sending it again cannot apply it twice.
        retry = Retry(total=retries, connect=retries, read=0, status=retries, backoff_factor=backoff_s,
                      status_forcelist=(503,), allowed_methods=None, respect_retry_after_header=True,
                      raise_on_status=False)
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "MemoryClient":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # ---- queries ---------------------------------------------------------------------------
    def classify(self, query: Query, **options: Any) -> Answer:
        """The decision for one image (path, bytes) or embedding, with its evidence.
        ``options``: QueryOptions' fields. Raises ApiError."""
        return Answer.from_json(self._call("POST", "/v1/classify", _query(query, QueryOptions(**options))))

    def neighbors(self, query: Query, **options: Any) -> Answer:
        """The memory items nearest to one image, embedding or ``Text`` (no vote). Raises ApiError."""
        return Answer.from_json(self._call("POST", "/v1/neighbors", _query(query, QueryOptions(**options))))

    def zero_shot(self, image: Query, labels: Sequence[str], templates: Sequence[str] | None = None,
                  **options: Any) -> ZeroShot:
        """CLIP zero-shot labels for one image (path, bytes) or embedding, among ``labels``
        (prompts: each of ``templates``, '{}' replaced by the label; the server's default
        'a photo of a {}.'), with the memory's kNN decision (``options``: QueryOptions').
        Raises ApiError (422 on ``text`` when the memory's encoder is not open_clip)."""
        body = {**_query(image, QueryOptions(**options)), "labels": list(labels)}
        if templates is not None:
            body["templates"] = list(templates)
        return ZeroShot.from_json(self._call("POST", "/v1/classify/zero-shot", body))

    def classify_many(self, queries: Iterable[Query], **options: Any) -> list[Answer]:
        """One answer per query, in order, ``batch`` queries per request."""
        return self._many("/v1/classify/batch", queries, QueryOptions(**options))

    def neighbors_many(self, queries: Iterable[Query], **options: Any) -> list[Answer]:
        return self._many("/v1/neighbors/batch", queries, QueryOptions(**options))

    def _many(self, path: str, queries: Iterable[Query], options: QueryOptions) -> list[Answer]:
        bodies = [_query(query, options) for query in queries]
        answers = []
        for start in range(0, len(bodies), self.batch):
            reply = self._call("POST", path, {"queries": bodies[start:start + self.batch]})
            answers += [Answer.from_json(body) for body in reply["results"]]
        return answers

    # ---- the memory ------------------------------------------------------------------------
    def memory(self) -> dict:
        """Version served, size, items per label, encoder, dimension, shards."""
        return self._call("GET", "/v1/memory")

    def versions(self) -> list[Version]:
        """The version history, oldest first."""
        rows = self._call("GET", "/v1/memory/versions")["versions"]
        return [Version(r["version"], bool(r["latest"]), r["parent"], r["operation"], int(r["count"]),
                        int(r["shards"]), r["created"]) for r in rows]

    def health(self) -> dict:
        return self._call("GET", "/healthz")

    # ---- edits (admin token) ---------------------------------------------------------------
    def add(self, images: Sequence[Query], labels: Sequence[str], keys: Sequence[str] | None = None,
            sources: Sequence[str] | None = None) -> list[Edit]:
        """Remember labelled images (paths, bytes) or embeddings, ``batch`` per request (each
        request publishes one version). ``keys`` default to the paths' names (required for
        bytes and embeddings). Raises ValueError for mismatched lengths, ApiError (409: a key
        already in the memory)."""
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if keys is None:
            if not all(isinstance(image, (str, os.PathLike)) for image in images):
                raise ValueError("keys are required unless every image is a file path")
            keys = [os.path.basename(os.fspath(image)) for image in images]
        sources = sources if sources is not None else [
            os.fspath(image) if isinstance(image, (str, os.PathLike)) else "" for image in images]
        if not len(keys) == len(sources) == len(images):
            raise ValueError("images, labels, keys and sources must have the same length")
        edits = []
        for start in range(0, len(images), self.batch):
            items = [{"key": key, "label": label, "source": source, **_payload(image)}
                     for image, label, key, source in zip(images[start:start + self.batch],
                                                          labels[start:start + self.batch],
                                                          keys[start:start + self.batch],
                                                          sources[start:start + self.batch])]
            edits.append(_edit(self._call("POST", "/v1/memory/items", {"items": items})))
        return edits

    def forget(self, ids: Sequence[int] = (), keys: Sequence[str] = (), labels: Sequence[str] = (),
               purge: bool = False) -> Edit:
        """Unlearn items by id, key or label: no query returns them from the returned version
        on (``purge``: their bytes also leave every file at once). Raises ApiError (404:
        nothing matched)."""
        body = {"ids": [int(i) for i in ids], "keys": list(keys), "labels": list(labels), "purge": purge}
        return _edit(self._call("DELETE", "/v1/memory/items", body))

    def rollback(self, to: str | None = None) -> Edit:
        """Serve ``to`` (default: the parent of the served version) again, as a new version;
        items unlearned since stay forgotten."""
        return _edit(self._call("POST", "/v1/memory/rollback", {"to": to}))

    # ---- transport -------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        try:
            response = self.session.request(method, self.url + path, json=body, timeout=self.timeout_s)
        except requests.RequestException as error:
            raise ApiError(0, "url", f"{method} {self.url}{path}: {error}") from error
        if response.status_code >= 400:
            try:
                detail = response.json()
            except ValueError:
                detail = {"error": response.text[:300]}
            raise ApiError(response.status_code, str(detail.get("field", "")),
                           str(detail.get("error", detail)))
        return response.json()


def _payload(image: Query) -> dict:
    """A query's or item's image, embedding or text field."""
    if isinstance(image, Text):
        return {"text": image.text}
    if isinstance(image, (bytes, bytearray)):
        return {"image_base64": base64.b64encode(image).decode()}
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as handle:
            return {"image_base64": base64.b64encode(handle.read()).decode()}
    vector = np.asarray(image, dtype=np.float32)
    if vector.ndim != 1:
        raise ValueError(f"an embedding is one vector, not shape {vector.shape}")
    return {"embedding": vector.tolist()}


def _query(query: Query, options: QueryOptions) -> dict:
    return {**_payload(query), **options.fields()}


def _edit(body: dict) -> Edit:
    return Edit(body["version"], int(body.get("size", 0)),
                {k: v for k, v in body.items() if k not in ("version", "size")})

"""The HTTP ingress: embed, fan out to every shard, merge the top-k, vote, explain.

Versioned under /v1; OpenAPI at /docs and /openapi.json. Mutating endpoints need the admin
bearer token, queries the read (or admin) token when one is configured (serving/auth.py).
Every bad request gets a 4xx JSON body naming the field.
(No ``from __future__ import annotations`` here: Serve's class-based views resolve the
endpoint annotations at run time, and string annotations would turn them into body fields.)
"""

import asyncio
import base64
import binascii
import functools
import logging
import time
from pathlib import Path

import numpy as np
import orjson
import ray
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse as StarletteJSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from ray import serve
from ray.serve.exceptions import BackPressureError, RayServeException

from indexer.edit import ForgetRequest, resolve_forget
from indexer.factory import nlist_of
from indexer.history import history
from indexer.items import ItemVectorMissing, item_vectors
from indexer.layout import read_latest
from indexer.search import SearchParams
from indexer.store import resolve_version
from serving.admission import Admission
from serving.aggregation import Aggregator
from serving.answers import merge_answers
from serving.auth import ADMIN, READ, Refused, authorize, check_sources
from serving.body_limit import BodyLimit, BodyTooLarge
from serving.data_plane import DataPlane, identity_of
from serving.decision import decide
from serving.follower import VersionFollower, VersionUnavailable, whole_stand_ins
from serving.models import (MAX_TEXT_CHARS, AddRequest, BatchRequest, ForgetRequestBody, QueryRequest, RollbackRequest,
                            ZeroShotRequest)
from serving.options import ServingOptions
from serving.rerank import Reranker, make_reranker, rerank_answer
from serving.searchers import RemoteSearchers, SearcherService, ShardQuery, switch_groups
from serving.thumbnails import SIZES, ImageRejected, SourceRefused, ThumbnailMissing, Thumbnails
from serving.writer import EditFailure

log = logging.getLogger("ray.serve")
QUERY_KINDS = ("image_base64", "embedding", "text", "item_id", "item_key")  # a query gives one
WEB = Path(__file__).resolve().parent / "web"  # the page: static files, no build step, no CDN
WEB_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
RETRY_AFTER_S = 1  # seconds a 503 tells the client to wait (Retry-After)


class JSONResponse(StarletteJSONResponse):
    """A JSON body written by orjson (numpy values and int keys allowed), as FastAPI's
    ORJSONResponse did before FastAPI deprecated it in favour of response models: the
    answers here are plain dicts with numpy in them, not models."""

    def render(self, content) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)


api = FastAPI(title="visual memory", version="1", default_response_class=JSONResponse,
              description="Classify images by retrieval; every answer comes with its evidence.")
api.add_middleware(BodyLimit, limit=lambda: getattr(api.state, "max_body_bytes", None))
api.add_middleware(Admission, limit=lambda: getattr(api.state, "max_inflight_requests", None))


class ApiError(Exception):
    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


@api.exception_handler(ApiError)
async def _api_error(request: Request, error: ApiError) -> JSONResponse:
    """A 503 (a version not served yet, the writer busy, an edit that lost a commit race:
    nothing wrong with the request) says when to try again, as admission's does."""
    headers = {"Retry-After": str(RETRY_AFTER_S)} if error.status == 503 else None
    return JSONResponse({"error": error.message, "field": error.field}, status_code=error.status,
                        headers=headers)


@api.exception_handler(Refused)
async def _refused(request: Request, error: Refused) -> JSONResponse:
    return JSONResponse({"error": error.message, "field": error.field}, status_code=error.status)


@api.exception_handler(Exception)
async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    """Every error is JSON, an unexpected one too (logged with its traceback)."""
    log.error("unhandled error on %s", request.url.path, exc_info=error)
    return JSONResponse({"error": f"internal error ({type(error).__name__}); see the server log",
                         "field": ""}, status_code=500)


@api.exception_handler(BodyTooLarge)
async def _body_too_large(request: Request, error: BodyTooLarge) -> JSONResponse:
    return JSONResponse({"error": error.detail, "field": "body"}, status_code=413)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (404: no such route, 405: a method the route does not take) in
    the API's shape."""
    return JSONResponse({"error": str(error.detail), "field": ""}, status_code=error.status_code,
                        headers=getattr(error, "headers", None))


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """422 naming the first invalid field (``errors``: every one); 400 for a body that is not
    JSON at all (pydantic's ``json_invalid``: its position is not a field). On a route that
    needs a token, the token is checked first, as for every other request (401/403)."""
    role = _required_role(request)
    if role is not None:
        try:
            _authorize(request, role)
        except ApiError as refused:
            return await _api_error(request, refused)
        except Refused as refused:
            return await _refused(request, refused)
    broken = [e for e in error.errors() if e.get("type") == "json_invalid"]
    if broken:
        where = broken[0]["loc"][-1] if broken[0].get("loc") else "?"
        return JSONResponse({"error": f"the body is not valid JSON ({broken[0]['msg']} at "
                             f"character {where})", "field": "body"}, status_code=400)
    first = error.errors()[0] if error.errors() else {"loc": ["body"], "msg": "invalid request"}
    field = ".".join(str(part) for part in first["loc"] if part not in ("body", "query"))
    details = [{"field": ".".join(str(p) for p in e["loc"] if p not in ("body", "query")) or "body",
                "error": e["msg"]} for e in error.errors()]
    return JSONResponse({"error": first["msg"], "field": field or "body", "errors": details},
                        status_code=422)


def _authorize(http: Request, role: str) -> None:
    """Raise unless the request's bearer token grants ``role`` under the serving options of the
    application answering it (``http.app.state``, set by the Router: Serve runs a copy of
    ``api`` unpickled with the Router class, so a module-level function must not read the
    module's ``api``): Refused 401 without one, 403 with one that does not (or, for ADMIN, when
    no admin token is configured: mutation disabled); ApiError 503 before the Router has set
    its options (serving/auth.py)."""
    options = getattr(http.app.state, "options", None)
    if options is None:
        raise ApiError(503, "Authorization", "the server is starting; try again")
    authorize(options, http.headers.get("authorization"), role)


def _granted(role: str):
    """A route's dependency: the bearer token must grant ``role`` (``_authorize``). Checked
    before the body's fields are validated; FastAPI parses a body before any dependency runs,
    so for a body that is not JSON ``_validation_error`` checks the token first itself
    (``_required_role``)."""
    async def check(http: Request) -> None:
        _authorize(http, role)
    check.role = role
    return Depends(check)


def _required_role(http: Request) -> str | None:
    """The role the matched route's ``_granted`` dependency requires; None for an open route
    (or none matched)."""
    dependant = getattr(http.scope.get("route"), "dependant", None)
    for dependency in getattr(dependant, "dependencies", ()):
        role = getattr(dependency.call, "role", None)
        if role is not None:
            return role
    return None


@serve.deployment(max_ongoing_requests=100)
@serve.ingress(api)
class Router:
    def __init__(self, options: dict, encoder, groups: list, group_shards: list[list[int]],
                 writer=None) -> None:
        self.options = ServingOptions.from_args(options)
        api.state.max_body_bytes = self.options.max_body_bytes
        api.state.max_inflight_requests = self.options.max_inflight_requests
        api.state.options = self.options  # the tokens (_granted)
        manifest = resolve_version(self.options.memory, self.options.version or None)
        self.encoder, self.group_shards, self.writer = encoder, group_shards, writer
        self.groups = ([RemoteSearchers(handle) for handle in groups] if groups else
                       [SearcherService(self.options.memory, shards, manifest.version,
                                        self.options.searcher_omp_threads) for shards in group_shards])
        self.num_shards = sum(len(shards) for shards in group_shards)
        self.dim, self.count = manifest.dim, manifest.count
        self.thumbnails = Thumbnails(self.options.source_policy())
        self.encoder_name = manifest.encoder
        self.nlist = nlist_of(manifest.factory)
        served = {g.current_version() for g in self.groups if isinstance(g, SearcherService)}
        # A pinned version (options.version) is served as is; otherwise follow LATEST.
        self.pinned = bool(self.options.version)
        self.follower = VersionFollower(self.options.memory, served.pop() if len(served) == 1
                                        else manifest.version, self._load, self.options.follow())
        self._starting: asyncio.Task | None = None  # _start
        self.registry = CollectorRegistry()
        self.version_refused = Gauge("vmem_versions_refused", "Newer versions this replica could "
                                     "not load (corrupt or missing files); it keeps serving its own",
                                     registry=self.registry)
        self.staleness = Gauge("vmem_version_check_age_seconds", "Seconds since this replica last "
                               "read LATEST", registry=self.registry)
        self.queries = Counter("vmem_queries", "Queries answered", ["endpoint"], registry=self.registry)
        self.latency = Histogram("vmem_query_latency_seconds", "Query latency", ["endpoint"],
                                 registry=self.registry)
        self.partial = Counter("vmem_partial_answers", "Answers missing a shard", registry=self.registry)
        self.shards_answered = Histogram("vmem_shards_answered", "Shards that answered a query",
                                         buckets=[0, 1, 2, 4, 8, 16, 32, 64, 128],
                                         registry=self.registry)
        self.stage = Histogram("vmem_stage_seconds", "Router time per stage of a query request "
                               "(embed: validate + encoder; search: fan-out to every shard group "
                               "and merge; decide: votes and evidence)", ["stage"],
                               buckets=[0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5],
                               registry=self.registry)
        self.shard_failures = Counter("vmem_shard_failures", "Shard calls that failed or timed out",
                                      ["shard"], registry=self.registry)
        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id
        # The direct data plane (serving/data_plane.py): this replica's own HTTP server on the
        # node's data-plane port, on this event loop; Serve's proxy keeps answering too.
        self.data_plane = (DataPlane.start(api, self.options.data_plane_host,
                                           self.options.data_plane_port,
                                           identity_of(context.app_name, self.options.memory))
                           if self.options.data_plane_port else None)

    # ---- queries -------------------------------------------------------------------------
    def _image_bytes(self, text: str, field: str) -> bytes:
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as error:
            raise ApiError(422, field, f"not valid base64: {error}") from error

    def _check_embedding(self, values: list[float], field: str) -> np.ndarray:
        """A query embedding as a float32 unit vector. Scale-invariant: the vector is divided
        by its largest magnitude (float64) before the norm, so 1e20s or 1e-23s are valid
        directions; zero, NaN or Inf are refused (422)."""
        vector = np.asarray(values, dtype=np.float64)
        if vector.shape != (self.dim,):
            raise ApiError(422, field, f"expected {self.dim} numbers, got {vector.size}")
        if not np.isfinite(vector).all():
            raise ApiError(422, field, "must be finite (no NaN or Inf)")
        scale = float(np.abs(vector).max())
        if scale == 0.0:
            raise ApiError(422, field, "must be non-zero")
        vector = vector / scale
        return (vector / np.linalg.norm(vector)).astype(np.float32)

    async def _embed_images(self, images: list[bytes], fields: list[str]) -> list[np.ndarray]:
        if self.encoder is None:
            raise ApiError(422, fields[0], "this memory is served for embedding queries only")
        embedded = await self.encoder.embed_images.remote(images)
        for field, result in zip(fields, embedded):
            if isinstance(result, str):
                raise ApiError(422, field, result)
        return embedded

    async def _embed_texts(self, texts: list[str], fields: list[str]) -> tuple[np.ndarray, float]:
        """(n, dim) float32 unit text embeddings (the encoder's CLIP text tower, loaded on the
        first text) and the model's logit scale; 422 on ``fields[0]`` when the memory's encoder
        has no text tower."""
        if self.encoder is None:
            raise ApiError(422, fields[0], "this memory is served for embedding queries only")
        if not self.encoder_name.startswith("open_clip:"):
            raise ApiError(422, fields[0], f"text queries need an open_clip encoder; this memory's "
                           f"is {self.encoder_name}")
        embedded = await self.encoder.embed_texts.remote(texts)
        if isinstance(embedded, str):
            raise ApiError(422, fields[0], embedded)
        return embedded

    async def _embed(self, requests: list[QueryRequest], prefix: str = "") -> np.ndarray:
        return await self._vectors(requests, lambda i: f"{prefix}{i}." if prefix else "")

    async def _vectors(self, requests: list, field_of) -> np.ndarray:
        """(n, dim) float32 unit vectors of requests or items that each carry exactly one of
        ``image_base64`` (embedded in one encoder call), ``embedding`` or (queries only)
        ``text`` (one text-tower call); 422 naming the field (``field_of(i)`` + the attribute)
        otherwise."""
        vectors: list[np.ndarray | None] = [None] * len(requests)
        images, fields, where = [], [], []
        texts, text_fields, text_where = [], [], []
        items, item_where = [], []
        for i, request in enumerate(requests):
            field = field_of(i)
            kinds = QUERY_KINDS if hasattr(request, "text") else ("image_base64", "embedding")
            given = [kind for kind in kinds if getattr(request, kind) is not None]
            if len(given) != 1:
                raise ApiError(422, f"{field}{given[1] if len(given) > 1 else 'image_base64'}",
                               f"give exactly one of {', '.join(kinds)}")
            if request.embedding is not None:
                vectors[i] = self._check_embedding(request.embedding, f"{field}embedding")
            elif request.image_base64 is not None:
                images.append(self._image_bytes(request.image_base64, f"{field}image_base64"))
                fields.append(f"{field}image_base64")
                where.append(i)
            elif request.text is not None:
                texts.append(request.text)
                text_fields.append(f"{field}text")
                text_where.append(i)
            else:
                items.append((request.item_id, request.item_key, f"{field}{given[0]}"))
                item_where.append(i)
        if images:
            for i, vector in zip(where, await self._embed_images(images, fields)):
                vectors[i] = vector
        if texts:
            for i, vector in zip(text_where, (await self._embed_texts(texts, text_fields))[0]):
                vectors[i] = vector
        if items:
            found = await asyncio.to_thread(self._item_vectors, items)
            for i, vector, (_, _, field) in zip(item_where, found, items):
                vectors[i] = self._check_embedding(vector.tolist(), field)
        return np.stack(vectors).astype(np.float32)

    def _item_vectors(self, items: list[tuple[int | None, str | None, str]]) -> np.ndarray:
        """The stored embeddings of live items named by (id, key, field) in the served version
        (indexer.items): 404 on the field for an item the version does not hold, 422 for a key
        naming several items."""
        manifest = resolve_version(self.options.memory, self.version)
        asked = ForgetRequest(ids=[i for i, _, _ in items if i is not None],
                              keys=[k for i, k, _ in items if i is None])
        ids, found = resolve_forget(self.options.memory, manifest, asked)
        chosen = []
        for item_id, key, field in items:
            matches = [n for n, (i, k) in enumerate(zip(ids.tolist(), found["keys"]))
                       if (i == item_id if item_id is not None else k == key)]
            if not matches:
                raise ApiError(404, field, f"no item {item_id if item_id is not None else repr(key)} "
                               f"in version {manifest.version}")
            if len(matches) > 1:
                raise ApiError(422, field, f"key {key!r} names {len(matches)} items "
                               f"(ids {[int(ids[n]) for n in matches][:5]}): query by item_id")
            chosen.append(matches[0])
        try:
            return item_vectors(self.options.memory, ids[chosen], [found["batches"][n] for n in chosen])
        except ItemVectorMissing as error:
            raise ApiError(404, items[0][2], str(error)) from error

    def _nprobe(self, request: QueryRequest, prefix: str = "") -> int:
        """The request's nprobe (0 = the version's default); 422 outside 1 ... nlist."""
        if request.nprobe is None:
            return 0
        if self.nlist and not 1 <= request.nprobe <= self.nlist:
            raise ApiError(422, f"{prefix}nprobe", f"nprobe must be between 1 and nlist={self.nlist}")
        return request.nprobe if self.nlist else 0

    def _k(self, request: QueryRequest, prefix: str = "") -> int:
        k = self.options.default_k if request.k is None else request.k
        if not 1 <= k <= self.options.max_k:
            raise ApiError(422, f"{prefix}k", f"k must be between 1 and {self.options.max_k}")
        return k

    def _aggregator(self, request: QueryRequest, prefix: str = "") -> Aggregator:
        try:
            return Aggregator(request.aggregator or self.options.default_aggregator, request.parameter)
        except ValueError as error:
            raise ApiError(422, f"{prefix}aggregator", str(error)) from error

    def _reranker(self, request: QueryRequest, prefix: str = "") -> Reranker | None:
        name = self.options.default_rerank if request.rerank is None else request.rerank
        try:
            return make_reranker(name) if name else None
        except ValueError as error:
            raise ApiError(422, f"{prefix}rerank", str(error)) from error

    async def _group(self, number: int, handle, query: ShardQuery, deadline: float):
        """One group's answer within the request's deadline (one budget across retries: a
        hung group costs at most ``request_deadline_s``, not tries x timeout); None if none.
        A group in this process is called directly: it searches inline (nothing to time out)."""
        if isinstance(handle, SearcherService):
            return await handle.search(query)
        for attempt in range(self.options.shard_retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                return await asyncio.wait_for(handle.search(query),
                                              min(self.options.shard_timeout_s, remaining))
            except (asyncio.TimeoutError, ray.exceptions.RayError, RayServeException) as error:
                for shard in self.group_shards[number]:
                    self.shard_failures.labels(shard=str(shard)).inc()
                log.warning("searcher group %d attempt %d failed: %s: %s", number, attempt + 1,
                            type(error).__name__, error)
                if isinstance(error, BackPressureError):  # overloaded: a retry now would only
                    break  # add to the queue it could not join (a replica gone is retried)
        return None

    async def _search(self, vectors: np.ndarray, k: int, nprobe: int, version: str,
                      with_vectors: bool = False) -> tuple:
        query = ShardQuery(vectors, k, SearchParams(nprobe=nprobe), version, with_vectors)
        deadline = time.monotonic() + self.options.request_deadline_s
        answers = await asyncio.gather(*[self._group(n, h, query, deadline)
                                         for n, h in enumerate(self.groups)])
        answers = [a for a in answers if a is not None and a.shards]  # a group may hold none
        answered = sorted(s for a in answers for s in a.shards)
        if not answered:
            raise ApiError(503, "shards", "no shard answered; try again")
        merged = merge_answers([a.answer for a in answers], k)
        self.shards_answered.observe(len(answered))
        if len(answered) < self.num_shards:
            self.partial.inc()
        stale = {shard: v for a in answers for shard, v in a.stale.items()}
        return merged, answered, stale

    def _envelope(self, merged, answered: list[int], stale: dict[int, str], k: int) -> dict:
        """The answer's provenance: its version, the shards that answered (``partial`` when
        some did not) and those answered from an ancestor version because a file of this one
        failed to load (``shards_stale``: stale, never holding an item deleted since)."""
        return {"version": merged.version, "k": k, "shards_answered": answered,
                "shards_total": self.num_shards, "partial": len(answered) < self.num_shards,
                "shards_stale": [{"shard": shard, "version": v} for shard, v in sorted(stale.items())]}

    async def _answer(self, requests: list[QueryRequest], vote: bool, prefix: str = "",
                      vectors: np.ndarray | None = None) -> list[dict]:
        fields = [f"{prefix}{i}." if prefix else "" for i in range(len(requests))]
        ks = [self._k(r, f) for r, f in zip(requests, fields)]
        aggregators = [self._aggregator(r, f) for r, f in zip(requests, fields)]
        rerankers = [self._reranker(r, f) for r, f in zip(requests, fields)]
        nprobes = [self._nprobe(r, f) for r, f in zip(requests, fields)]
        started = time.perf_counter()
        version = await self._version(max((r.min_version or "" for r in requests), default=""))
        if vectors is None:
            vectors = await self._embed(requests, prefix)
        embedded = time.perf_counter()
        with_vectors = any(r is not None and r.needs_vectors for r in rerankers)
        rows = np.empty(len(requests), dtype=np.int64)  # each query's row in its group's answer
        groups = {nprobe: [i for i, p in enumerate(nprobes) if p == nprobe] for nprobe in nprobes}
        for members in groups.values():
            rows[members] = np.arange(len(members))
        answers = await asyncio.gather(*[self._search(vectors[members], max(ks[i] for i in members),
                                                      nprobe, version, with_vectors)
                                         for nprobe, members in groups.items()])
        searched = dict(zip(groups, answers))
        self.stage.labels(stage="embed").observe(embedded - started)
        self.stage.labels(stage="search").observe(time.perf_counter() - embedded)
        deciding = time.perf_counter()
        results = []
        for i, (request, k, aggregator, reranker) in enumerate(zip(requests, ks, aggregators, rerankers)):
            merged, answered, stale = searched[nprobes[i]]
            row = merged.select(slice(rows[i], rows[i] + 1))
            if reranker is not None:
                row = rerank_answer(reranker, vectors[i:i + 1], row)
            ids, scores = row.ids[:, :k], row.scores[:, :k]
            meta = {f: v[:, :k] for f, v in row.meta.items()}
            unknown_below = (self.options.unknown_below if request.unknown_below is None
                             else request.unknown_below)
            decision = decide(ids, scores, meta, aggregator, unknown_below)[0]
            body = self._envelope(merged, answered, stale, k)
            if reranker is not None:
                body["reranked_by"] = reranker.name
            if vote:
                body.update(decision.to_dict(with_evidence=request.explain), aggregator=aggregator.method,
                            parameter=aggregator.value)
            else:
                body["neighbours"] = decision.to_dict()["neighbours"]
                for neighbour in body["neighbours"]:
                    neighbour.pop("vote")
            results.append(body)
        self.stage.labels(stage="decide").observe(time.perf_counter() - deciding)
        return results

    async def _timed(self, endpoint: str, coroutine):
        started = time.perf_counter()
        result = await coroutine
        self.queries.labels(endpoint=endpoint).inc()
        self.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)
        return result

    @api.post("/v1/classify", dependencies=[_granted(READ)])
    async def classify(self, request: QueryRequest) -> JSONResponse:
        return JSONResponse((await self._timed("classify", self._answer([request], vote=True)))[0])

    @api.post("/v1/classify/zero-shot", dependencies=[_granted(READ)])
    async def zero_shot(self, request: ZeroShotRequest) -> JSONResponse:
        """CLIP zero-shot labels for an image next to the memory's kNN decision on it."""
        return JSONResponse(await self._timed("zero_shot", self._zero_shot(request)))

    async def _zero_shot(self, request: ZeroShotRequest) -> dict:
        """Zero-shot (Radford et al. 2021, section 3.1.4): each label's text embedding is the
        normalised mean of its prompts' unit embeddings; probabilities are
        softmax(logit_scale x cosine) over the labels; ties go to the first label given."""
        labels, templates = request.labels, request.templates
        if request.text is not None:
            raise ApiError(422, "text", "zero-shot classifies an image: give image_base64 or embedding")
        if any(not label.strip() for label in labels) or len(set(labels)) != len(labels):
            raise ApiError(422, "labels", "labels must be distinct and non-empty")
        if any("{}" not in template for template in templates):
            raise ApiError(422, "templates", "every template needs a '{}' for the label")
        prompts = [template.replace("{}", label) for label in labels for template in templates]
        if any(len(prompt) > MAX_TEXT_CHARS for prompt in prompts):
            raise ApiError(422, "templates", f"a prompt is longer than {MAX_TEXT_CHARS} characters")
        if request.image_base64 is not None and not self.encoder_name.startswith("open_clip:"):
            await self._embed_texts(prompts[:1], ["labels"])  # the same 422, before any image work
        vectors = await self._embed([request])
        memory = (await self._answer([request], vote=True, vectors=vectors))[0]
        text, scale = await self._embed_texts(prompts, ["labels"])
        classes = text.reshape(len(labels), len(templates), -1).mean(axis=1)
        classes /= np.linalg.norm(classes, axis=1, keepdims=True)
        logits = scale * (classes @ vectors[0]).astype(np.float64)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        label = labels[int(np.argmax(probabilities))]
        return {"label": label, "scores": dict(zip(labels, probabilities.round(6).tolist())),
                "templates": templates, "logit_scale": round(float(scale), 4),
                "memory": memory, "agree": memory["label"] == label}

    @api.post("/v1/neighbors", dependencies=[_granted(READ)])
    async def neighbors(self, request: QueryRequest) -> JSONResponse:
        return JSONResponse((await self._timed("neighbors", self._answer([request], vote=False)))[0])

    @api.post("/v1/classify/image", dependencies=[_granted(READ)])
    async def classify_image(self, http: Request, k: int | None = Query(None),
                             aggregator: str | None = Query(None),
                             parameter: float | None = Query(None)) -> JSONResponse:
        """The image itself as the request body (any allowed format), options as query parameters
        (k, aggregator, parameter; 422 naming any other)."""
        unknown = sorted(set(http.query_params) - {"k", "aggregator", "parameter"})
        if unknown:
            raise ApiError(422, unknown[0], f"unknown query parameter {unknown[0]!r}: "
                           f"the options are k, aggregator and parameter")
        data = await http.body()
        request = QueryRequest(image_base64=base64.b64encode(data).decode(), k=k,
                               aggregator=aggregator, parameter=parameter)
        try:
            answer = await self._timed("classify", self._answer([request], vote=True))
        except ApiError as error:  # the image is the body here, not a base64 field
            if error.field == "image_base64":
                error.field = "body"
            raise
        return JSONResponse(answer[0])

    def _check_batch(self, batch: BatchRequest) -> None:
        if not 1 <= len(batch.queries) <= self.options.max_batch:
            raise ApiError(422, "queries", f"send 1 to {self.options.max_batch} queries")

    @api.post("/v1/classify/batch", dependencies=[_granted(READ)])
    async def classify_batch(self, batch: BatchRequest) -> JSONResponse:
        self._check_batch(batch)
        return JSONResponse({"results": await self._timed("classify_batch",
                                                           self._answer(batch.queries, True, "queries."))})

    @api.post("/v1/neighbors/batch", dependencies=[_granted(READ)])
    async def neighbors_batch(self, batch: BatchRequest) -> JSONResponse:
        self._check_batch(batch)
        return JSONResponse({"results": await self._timed("neighbors_batch",
                                                           self._answer(batch.queries, False, "queries."))})

    # ---- the memory ----------------------------------------------------------------------
    @api.get("/v1/memory", dependencies=[_granted(READ)])
    async def memory(self) -> dict:
        stats, degraded = await asyncio.gather(
            asyncio.gather(*[h.stats(self.version) for h in self.groups]), self._degraded_shards())
        classes: dict[str, int] = {}
        for shard_classes in stats:
            for label, count in shard_classes.items():
                classes[label] = classes.get(label, 0) + count
        manifest = await asyncio.to_thread(resolve_version, self.options.memory, self.version)
        return {"version": self.version, "size": sum(classes.values()), "classes": classes,
                "encoder": self.encoder_name, "dim": self.dim, "shards": self.num_shards,
                # the edit model's state: segments per shard (base + deltas) and tombstoned
                # items (hidden, their bytes still in the files until compaction)
                "segments": sum(len(e.segments) for e in manifest.shards),
                "tombstoned": sum(e.tombstoned for e in manifest.shards),
                # a shard whose files of this version failed to load is counted from the older
                # version it is served from, or not at all when it is left out (as /healthz)
                "degraded_shards": degraded}


    def __del__(self) -> None:
        """Serve calls this when it stops a replica gracefully: its lease goes with it, so edits
        do not wait for a replica that no longer serves."""
        follower = getattr(self, "follower", None)
        if follower is not None:
            follower.stop()
        data_plane = getattr(self, "data_plane", None)
        if data_plane is not None:
            data_plane.stop()

    # ---- the version served ----------------------------------------------------------------
    @property
    def version(self) -> str:
        return self.follower.version

    async def _load(self, version: str, strict: bool = True) -> None:
        """Make every searcher group serve ``version``. ``strict`` (a switch): raises if any
        shard cannot load from it, and the follower keeps the current version. Otherwise (at
        start) a shard whose files fail is served from a fallback version or left out
        (serving/searchers.py ShardGroup), and /healthz says so. Two-phase when ``strict``
        (``switch_groups``): no group switches to a version another refuses."""
        await switch_groups(self.groups, version, strict)

    async def _start(self) -> None:
        """First use in the replica's event loop: serve LATEST (or a version standing in for
        it) and start following it. Every request waits for the one start; a start that
        failed is tried again by the next request."""
        if self.pinned:
            return
        task = self._starting
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            self._starting = asyncio.get_running_loop().create_task(self._start_once())
        await asyncio.shield(self._starting)

    async def _start_once(self) -> None:
        latest = await asyncio.to_thread(read_latest, self.options.memory)
        if latest:  # every group (in-process or remote) on LATEST, a shard that fails to load
            # served from a fallback version or left out (never a version missing a deletion)
            start, why = await self._start_version(latest)
            await self.follower.start_on_loadable(start, functools.partial(self._load, strict=False))
            if start != latest:
                self.follower.refuse(latest, why)
                await self.follower.refresh()  # LATEST read again: an edit published meanwhile
        self.follower.start()

    async def _start_version(self, latest: str) -> tuple[str, str]:
        """The version to start on and why LATEST was passed over ("" when it was not): LATEST,
        unless it would leave a shard out (no file of it loads, nor a fallback version's) and
        a version standing in for it whole loads with every shard (serving/follower.py
        ``whole_stand_ins``: the version the replicas already running keep when they refuse
        LATEST, so a replica started now answers as they do). Groups are probed, not switched."""
        missing = await self._left_out(latest)
        if not missing:
            return latest, ""
        why = "; ".join(f"shard {shard}: {reason}" for shard, reason in sorted(missing.items()))
        for candidate in await asyncio.to_thread(whole_stand_ins, self.options.memory, latest,
                                                 self.options.follow().fallback_depth):
            if await self._left_out(candidate) == {}:
                log.error("version %s would leave shards out (%s): starting on %s, which stands "
                          "in for it whole", latest, why, candidate)
                return candidate, f"shards left out ({why}); {candidate} stands in for it whole"
        return latest, ""

    async def _left_out(self, version: str) -> dict[int, str] | None:
        """{shard: why} for the shards of ``version`` no file would serve (SearcherService
        ``left_out``: loaded, not served), over every searcher group; None when a group
        cannot say within ``reload_timeout_s``."""
        try:
            found = await asyncio.wait_for(asyncio.gather(*[h.left_out(version) for h in self.groups]),
                                           self.options.follow().reload_timeout_s)
        except (asyncio.TimeoutError, ray.exceptions.RayError, RayServeException) as error:
            log.warning("could not tell which shards of %s load: %s", version, error)
            return None
        return {shard: why for group in found for shard, why in group.items()}

    async def _version(self, min_version: str = "", field: str = "min_version") -> str:
        """The version this request is answered from (serving/follower.py guarantees); 503
        naming ``field`` when ``min_version`` is not served in time."""
        await self._start()
        if self.pinned:
            return self.version
        try:
            return await self.follower.ensure(min_version or None)
        except VersionUnavailable as error:
            raise ApiError(503, field, str(error)) from error

    async def _edit(self, call) -> dict:
        """Run an edit on the writer; its failures become JSON errors. This replica then serves
        the edit's version before answering (the writer already waited for every replica)."""
        if self.writer is None:
            raise ApiError(503, "memory", "this deployment has no writer: edits are disabled")
        result = await call
        if isinstance(result, EditFailure):
            raise ApiError(result.status, result.field, result.message)
        await self._version(result["version"], "version")  # the edit's, not a request field
        return result

    @api.post("/v1/memory/items", dependencies=[_granted(ADMIN)])
    async def add(self, body: AddRequest) -> dict:
        check_sources([item.source for item in body.items], self.options.source_policy())
        if not body.items:
            raise ApiError(422, "items", "send at least one item")
        vectors = await self._vectors(body.items, lambda i: f"items.{i}.")
        return await self._edit(self.writer.add.remote(body.items, vectors, self.encoder_name))

    @api.delete("/v1/memory/items", dependencies=[_granted(ADMIN)])
    async def forget(self, body: ForgetRequestBody) -> dict:
        if not (body.ids or body.keys or body.labels):
            raise ApiError(422, "ids", "name what to forget: ids, keys or labels")
        return await self._edit(self.writer.forget.remote(body))

    @api.get("/v1/memory/versions", dependencies=[_granted(READ)])
    async def versions(self) -> dict:
        """The version history (``vmem index log``), oldest first, and the version this replica
        serves."""
        return {"serving": self.version, "versions": await asyncio.to_thread(history, self.options.memory)}

    @api.post("/v1/memory/rollback", dependencies=[_granted(ADMIN)])
    async def rollback(self, body: RollbackRequest) -> dict:
        """Serve an earlier version again, as a new version (admin)."""
        return await self._edit(self.writer.rollback.remote(body.to))

    @api.post("/v1/memory/reload", dependencies=[_granted(ADMIN)])
    async def reload(self) -> dict:
        """Every replica follows LATEST by itself; this waits (bounded by the writer's confirm
        timeout, never holding the edit lock) until every replica serves it."""
        return await self._edit(self.writer.reload.remote())

    async def check_health(self) -> None:
        """Serve's health check: searcher groups in this replica run a real search; the
        version follower is (re)started here too."""
        await self._start()
        for group in self.groups:
            if isinstance(group, SearcherService):
                group.check_health()

    # ---- the web page (serving/web/) -----------------------------------------------------------
    @api.get("/", include_in_schema=False)
    async def page(self) -> FileResponse:
        """The page: query, inspect the evidence, edit (with the admin token), versions."""
        return FileResponse(WEB / "index.html", media_type="text/html")

    @api.get("/static/{name}", include_in_schema=False)
    async def static(self, name: str) -> FileResponse:
        if name not in WEB_FILES:  # a fixed list: no path is ever built from the request
            raise ApiError(404, "name", f"no static file {name!r}")
        return FileResponse(WEB / name, media_type=WEB_FILES[name])

    @api.get("/v1/thumbnail", dependencies=[_granted(READ)])
    async def thumbnail(self, source: str = Query(..., min_length=1),
                        size: int = Query(160)) -> Response:
        """A JPEG thumbnail of a remembered image, read through ``allowed_source_roots`` only
        (serving/thumbnails.py): 403 for a source outside them (nothing is read), 404 when it
        can no longer be read, 422 for a size not offered or a file that is not an image."""
        if size not in SIZES:
            raise ApiError(422, "size", f"size must be one of {list(SIZES)}")
        try:
            data = await asyncio.to_thread(self.thumbnails.get, source, size)
        except SourceRefused as error:
            raise ApiError(403, "source", str(error)) from error
        except ThumbnailMissing as error:
            raise ApiError(404, "source", str(error)) from error
        except ImageRejected as error:
            raise ApiError(422, "source", f"not a readable image: {error}") from error
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @api.get("/healthz")
    async def healthz(self) -> dict:
        """``status``: ok, or degraded when a newer version was refused (the reason is listed;
        the replica keeps answering from ``version``) or a shard of ``version`` failed to load
        (``degraded_shards``: shard -> the older version it is served from, or None when it is
        left out, and why; as one replica of each searcher group sees it)."""
        await self._start()
        status = self.follower.status()
        degraded = await self._degraded_shards()
        if degraded:
            status["status"] = "degraded"
        return {**status, "degraded_shards": degraded,
                "shards": self.num_shards, "replica": self.replica,
                "data_plane": self.data_plane.address if self.data_plane else None}

    async def _degraded_shards(self) -> dict[str, dict]:
        """{shard (str, ascending): {"serving": the older version it is served from, or None
        when left out, "reason"}} over every searcher group, as one replica of each sees it; a
        group that does not answer within ``shard_timeout_s`` lists its shards with why."""
        degraded = {}
        for number, found in enumerate(await asyncio.gather(*[self._degraded(h) for h in self.groups])):
            if isinstance(found, Exception):  # a group that cannot say: its shards, and why
                found = {s: {"serving": None, "reason": f"searcher group {number} did not answer: "
                             f"{type(found).__name__}: {found}"} for s in self.group_shards[number]}
            degraded.update({str(shard): why for shard, why in found.items()})
        return dict(sorted(degraded.items(), key=lambda x: int(x[0])))

    async def _degraded(self, group) -> dict | Exception:
        """A searcher group's degraded shards (one replica's view), within ``shard_timeout_s``:
        the error instead when it does not answer."""
        try:
            return await asyncio.wait_for(group.degraded(), self.options.shard_timeout_s)
        except (asyncio.TimeoutError, ray.exceptions.RayError, RayServeException) as error:
            return error  # overloaded (BackPressureError), unavailable, dead or slow

    @api.get("/metrics")
    async def metrics(self) -> PlainTextResponse:
        status = self.follower.status()
        self.version_refused.set(len(status["refused_versions"]))
        self.staleness.set(status["seconds_since_check"])
        return PlainTextResponse(generate_latest(self.registry).decode(),
                                 media_type="text/plain; version=0.0.4")

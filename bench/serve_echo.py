"""The floors under any app on this machine: a trivial FastAPI app that parses a JSON body
``{"embedding": [384 floats]}`` and echoes it back, as a Serve ingress deployment (``app``:
the router's Serve settings, max_ongoing_requests 100, 0.25 CPU, behind the same HTTP proxy)
and as a plain ASGI app (``plain_api``: ``uvicorn bench.serve_echo:plain_api --http httptools``,
what the direct data plane runs on).

(No ``from __future__ import annotations``: FastAPI resolves the endpoint annotations at run
time, as in serving/router.py.)
"""

from fastapi import FastAPI
from fastapi.responses import ORJSONResponse
from pydantic import BaseModel
from ray import serve

api = FastAPI(default_response_class=ORJSONResponse)


class EchoBody(BaseModel):
    embedding: list[float]


@serve.deployment(max_ongoing_requests=100, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Echo:
    @api.post("/echo")
    async def echo(self, body: EchoBody) -> ORJSONResponse:
        return ORJSONResponse({"embedding": body.embedding})

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}


app = Echo.bind()

plain_api = FastAPI(default_response_class=ORJSONResponse)


@plain_api.post("/echo")
async def plain_echo(body: EchoBody) -> ORJSONResponse:
    return ORJSONResponse({"embedding": body.embedding})


@plain_api.get("/healthz")
async def plain_healthz() -> dict:
    return {"status": "ok"}

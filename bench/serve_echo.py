"""The floor under any Serve app on this machine: a trivial FastAPI ingress deployment that
parses a JSON body ``{"embedding": [384 floats]}`` and echoes it back. Deployed with the
router's Serve settings (max_ongoing_requests 100, 0.25 CPU), behind the same HTTP proxy.

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

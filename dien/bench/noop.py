"""A no-op scoring application: the ceiling Ray Serve gives a machine for a request of a given size.

One HTTP deployment with the DIEN ingress's deployment options that parses and validates the same
``POST /v1/score`` body (the same request model and limits) and answers fixed scores: no history lookup,
no second deployment, no model. Whatever the DIEN application answers per second, as a share of this one,
is what its own work (the scorer hop, batching and the model) costs.

    serve run dien.bench.noop:build_noop_app
"""
# No `from __future__ import annotations`: FastAPI reads the endpoint's annotations at runtime and Serve
# converts the builder's args only when the annotation is the class itself (as in dien.serve.app).
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve import Application

from dien.serve.config import DEFAULT_VERSION, RequestLimits
from dien.serve.ingress import INGRESS
from dien.serve.schemas import ModelRef, ScoreResponse, score_request_model

NOOP_MODEL = ModelRef(name="noop", version="0", label=DEFAULT_VERSION)
NOOP_SCORE = 0.5


class NoopArgs(BaseModel):
    """The ``args`` of ``dien.bench.noop:build_noop_app``."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    limits: RequestLimits = RequestLimits()
    """Request validation limits, as the DIEN ingress enforces them."""


# The DIEN ingress's options (dien.serve.ingress.Ingress), so both compete for the same CPU share.
@serve.deployment(name=INGRESS, max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.5})
@serve.ingress()
class NoopIngress:
    """``POST /v1/score`` answering :data:`NOOP_SCORE` for every candidate."""

    def __init__(self, limits: RequestLimits) -> None:
        self.limits = RequestLimits.model_validate(limits)

    def __serve_build_asgi_app__(self) -> FastAPI:
        ScoreRequest = score_request_model(self.limits)
        api = FastAPI(title="No-op scoring (benchmark ceiling)")

        @api.post("/v1/score", response_model=ScoreResponse, max_body_size=self.limits.max_body_bytes)
        async def score(body: ScoreRequest) -> ScoreResponse:
            return ScoreResponse(scores=[NOOP_SCORE] * len(body.candidates), model=NOOP_MODEL, history_length=0)

        @api.get("/healthz")
        async def healthz() -> dict[str, str]:
            return {"status": "ok"}

        return api


def build_noop_app(args: NoopArgs) -> Application:
    args = NoopArgs.model_validate(args)
    return NoopIngress.bind(args.limits)

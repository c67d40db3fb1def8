"""The HTTP ingress deployment: validates requests, resolves histories, calls the scorer (a deployment of its
own, or in this process with ``scoring: in_ingress``), appends behavior events to the user-history store.

The user-history store is read here rather than in a deployment of its own: a lookup is a binary search and a
slice in the snapshot (microseconds) or one ``ZRANGE`` in Redis, far less than the extra hop and
serialization a separate deployment would add to every request, and the ingress is the CPU-only,
independently scaled tier (the scorer may hold a GPU and should spend its batch loop on tensors only). Each
ingress replica holds a copy of the snapshot (see ``UserHistoryStore`` for its size) or a connection pool to
the one Redis they share.
"""
# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at runtime, and the
# request model is a local class built from the limits.
import asyncio
import logging
from typing import Any, Callable

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import metrics
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from dien.artifacts import load_artifact
from dien.serve.auth import TokenAuth, load_tokens
from dien.serve.batching import Arrivals
from dien.serve.config import (IngressConfig, RedisStoreConfig, RoutingConfig, ScorerConfig, ServeArgs,
                               SnapshotStoreConfig, resolve_path)
from dien.serve.forwarding import RemoteScorer, ScorerUnavailable
from dien.serve.history import (BehaviorEvent, HistoryStore, HistoryStoreError, ReadOnlyStore, StoreUnavailable,
                                UserHistoryStore)
from dien.serve.redis_history import RedisHistoryStore
from dien.serve.schemas import (ErrorResponse, EventsResponse, FieldError, ScoreResponse, describe,
                                error_response_body, events_request_model, item_and_category_lists, metric_field,
                                score_request_model)
from dien.serve.routing import Router, ShadowComparison
from dien.serve.scorer import BatchScorer, exponential_bounds
from dien.serve.scoring import ScoreJob, ScoreResult

logger = logging.getLogger("ray.serve")

INGRESS = "Ingress"
"""The deployment's name (the ``deployments:`` entry of the Serve configs)."""
BATCH_SIZE_HEADER = "X-DIEN-Batch-Size"
"""Response header: how many requests were scored in the same batch as this one."""
HEALTH_TIMEOUT_S = 2.0
RETRY_AFTER_S = 1
"""``Retry-After`` of a 503 for a store that did not answer."""
SCORE_PATH = "/v1/score"


def open_history_store(config: str | SnapshotStoreConfig | RedisStoreConfig | None) -> HistoryStore | None:
    """The store a Serve config's ``history`` names (a bare string: a snapshot's path); None for None."""
    if config is None:
        return None
    if isinstance(config, RedisStoreConfig):
        return RedisHistoryStore(config)
    path = config.path if isinstance(config, SnapshotStoreConfig) else config
    return UserHistoryStore.load(resolve_path(path, "user history"))


class InProcessScorer:
    """A :class:`BatchScorer` in the ingress's own process (``scoring: in_ingress``): the same calls, no hop."""

    def __init__(self, scorer: BatchScorer) -> None:
        self.scorer = scorer

    async def score(self, job: ScoreJob) -> ScoreResult:
        return (await self.scorer.score([job]))[0]

    async def ready(self) -> dict[str, str]:
        return self.scorer.ready()

    async def model_info(self) -> dict[str, Any]:
        return self.scorer.model_info()


def current_request_id() -> str:
    """Serve's id of the request being handled (also sent back in the ``X-Request-ID`` response header)."""
    # Serve has no public accessor; this is the context its own log filter reads.
    return serve.context._get_serve_request_context().request_id


def body_too_large(max_bytes: int) -> list[FieldError]:
    return [FieldError(field="body", message=f"larger than the limit of {max_bytes} bytes")]


class DeclaredBodyLimit:
    """Answers 413 before reading a body whose Content-Length exceeds the limit. Bodies without a
    Content-Length (chunked) are counted while read, by the route's ``max_body_size``."""

    def __init__(self, app: ASGIApp, max_bytes: int, reject: Callable[[int, list[FieldError]], Response]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.reject = reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = dict(scope["headers"]).get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self.max_bytes:
                await self.reject(413, body_too_large(self.max_bytes))(scope, receive, send)
                return
        await self.app(scope, receive, send)


class CountArrivals:
    """Counts each scoring request in ``arrivals`` from when it reaches the app until it joins a batch, so that
    a batch in this process does not start on its quiet gap while requests are still being read and parsed."""

    def __init__(self, app: ASGIApp, arrivals: Arrivals) -> None:
        self.app = app
        self.arrivals = arrivals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # endswith: under a route prefix the path keeps it.
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].endswith(SCORE_PATH):
            with self.arrivals.arriving():
                await self.app(scope, receive, send)
        else:
            await self.app(scope, receive, send)


@serve.deployment(
    name=INGRESS,
    # The ingress only awaits the scorer: let it hold enough requests to fill the scorers' batches.
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0.5},
    max_surge_percent=100,
    graceful_shutdown_timeout_s=30,
    max_constructor_retry_count=3,
)
@serve.ingress()
class Ingress:
    """``POST /v1/score``, ``POST /v1/events``, ``GET /v1/model``, ``GET /healthz``; OpenAPI at ``/docs``."""

    def __init__(self, scorers: dict[str, DeploymentHandle] | None, args: ServeArgs) -> None:
        """``scorers``: each version label's Scorer deployment handle, or None to score in this process
        (``scoring: in_ingress``)."""
        args = ServeArgs.model_validate(args)
        if scorers is None:
            self.arrivals: Arrivals | None = Arrivals()
            self.in_process = {label: BatchScorer(path, args.device, load_artifact, args.category_conflict, label,
                                                  self.arrivals)
                               for label, path in args.versions().items()}
            for scorer in self.in_process.values():
                scorer.reconfigure(ScorerConfig().model_dump())  # until a user_config arrives
            self.scorers = {label: InProcessScorer(scorer) for label, scorer in self.in_process.items()}
        else:
            self.arrivals = None
            self.in_process = None
            self.scorers = {label: RemoteScorer(handle) for label, handle in scorers.items()}
        self.router = Router(RoutingConfig(), list(self.scorers))
        self.comparisons: dict[str, ShadowComparison] = {}
        self._shadow_tasks: set[asyncio.Task] = set()
        self.limits = args.limits
        self.auth = args.auth
        self.tokens = load_tokens(args.auth) if args.auth is not None else None
        self.store = open_history_store(args.history)
        self._rejected = metrics.Counter(
            "dien_ingress_rejected", description="Requests answered with a 4xx, or a 503 for a store that did not "
                                                 "answer.", tag_keys=("status", "field"))
        self._unknown_users = metrics.Counter(
            "dien_ingress_unknown_users", description="Requests whose user has no stored history.")
        self._events = metrics.Counter(
            "dien_ingress_events", description="Behavior events received, by outcome.", tag_keys=("outcome",))
        self._routed = metrics.Counter(
            "dien_ingress_routed", description="Score requests by the version label that answered them.",
            tag_keys=("model_label",))
        self._shadowed = metrics.Counter(
            "dien_shadow_requests", description="Requests a shadow version scored too, by outcome (same_top: "
                                                "it put the answered top candidate first).",
            tag_keys=("model_label", "outcome"))
        self._shadow_diff = metrics.Histogram(
            "dien_shadow_abs_diff", description="Mean absolute difference of a shadow's click probabilities from "
                                                "the answered ones, per request.",
            boundaries=exponential_bounds(1e-6, 1.0), tag_keys=("model_label",))
        if isinstance(self.store, UserHistoryStore):
            logger.info("User-history store: %d users, %.1f MiB", len(self.store), self.store.nbytes / 2**20)
        elif self.store is not None:
            logger.info("User-history store: %s", self.store.name)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """:class:`IngressConfig`: the routing between versions, and the scorer settings with ``scoring:
        in_ingress`` (with Scorer deployments they belong in their ``user_config``)."""
        config = IngressConfig.model_validate(user_config)
        scorer_settings = config.scorer_settings()
        if scorer_settings is not None and self.in_process is None:
            raise ValueError("the Ingress's user_config takes scorer settings only with scoring: in_ingress; put "
                             f"{', '.join(sorted(config.model_fields_set - {'routing', 'forwarding'}))} in the "
                             "Scorer deployments' user_config")
        if "forwarding" in config.model_fields_set and self.in_process is not None:
            raise ValueError("the Ingress's user_config takes forwarding only with scoring: separate (with "
                             "in_ingress no request leaves the replica): remove it")
        router = Router(config.routing, list(self.scorers))
        for scorer in (self.in_process or {}).values():
            scorer.reconfigure(scorer_settings or ScorerConfig().model_dump())
        if self.in_process is None:
            for scorer in self.scorers.values():
                scorer.reconfigure(config.forwarding)
        self.router = router
        logger.info("Ingress routing: %s%s", router.describe(),
                    "" if self.in_process is not None else f"; forwarding: {config.forwarding.model_dump()}")

    async def history_of(self, user_id: str) -> tuple[list[str | None], list[str | None]]:
        """The stored history of ``user_id``, empty for an unknown user."""
        found = await self.store.history(user_id) if self.store is not None else None
        if found is None:
            self._unknown_users.inc()
            return [], []
        return found

    async def score(self, body: Any, response: Response) -> ScoreResponse:
        if body.history is not None:
            items, cats = item_and_category_lists(body.history)
        elif body.user_id is not None:
            items, cats = await self.history_of(body.user_id)
        else:
            raise RequestValidationError([{"type": "missing", "loc": ("body", "user_id"), "input": None,
                                           "msg": "Field required when history is not given"}])
        candidate_items, candidate_cats = item_and_category_lists(body.candidates)
        job = ScoreJob(candidate_items=candidate_items, candidate_cats=candidate_cats, history_items=items,
                       history_cats=cats, request_id=current_request_id(), history_from_request=body.history is not None)
        router = self.router
        label = self.named_version(body.version) if body.version is not None else router.route(body.user_id)
        result: ScoreResult = await self.scorers[label].score(job)
        if result.errors:
            raise RequestValidationError([{"type": "scorer", "loc": ("body", e["field"]), "msg": e["message"],
                                           "input": None} for e in result.errors])
        self._routed.inc(tags={"model_label": label})
        if body.version is None:
            for shadow in router.shadows(body.user_id, label):
                task = asyncio.create_task(self.shadow_score(shadow, job, result))
                self._shadow_tasks.add(task)  # the loop keeps only weak references to tasks
                task.add_done_callback(self._shadow_tasks.discard)
        response.headers[BATCH_SIZE_HEADER] = str(result.batch_size)
        return ScoreResponse(scores=result.scores, model=result.model, history_length=result.history_length,
                             unknown_candidates=result.unknown_candidates,
                             corrected_categories=result.corrected_categories)

    def named_version(self, label: str) -> str:
        if label not in self.scorers:
            raise RequestValidationError([{"type": "value_error", "loc": ("body", "version"), "input": label,
                                           "msg": f"unknown version {label!r}; this application serves "
                                                  f"{', '.join(self.scorers)}"}])
        return label

    async def shadow_score(self, label: str, job: ScoreJob, answered: ScoreResult) -> None:
        """Score ``job`` with the shadow version ``label`` and compare with the ``answered`` result; a failure
        here is counted and logged, never seen by the client (its answer has gone)."""
        comparison = self.comparisons.setdefault(label, ShadowComparison())
        try:
            shadow = await self.scorers[label].score(job)
            if shadow.errors:
                raise ValueError("; ".join(e["message"] for e in shadow.errors))
        except Exception as error:  # noqa: BLE001 -- whatever the shadow did, the answered request stands
            comparison.failed += 1
            self._shadowed.inc(tags={"model_label": label, "outcome": "failed"})
            logger.warning("shadow %s failed on request %s: %s: %s", label, job.request_id, type(error).__name__,
                           error)
            return
        answered_label = answered.model.get("label", "")
        mean_diff = comparison.add(answered_label, answered.scores, shadow.scores)
        same_top = int(np.argmax(answered.scores)) == int(np.argmax(shadow.scores))
        self._shadowed.inc(tags={"model_label": label, "outcome": "same_top" if same_top else "other_top"})
        self._shadow_diff.observe(mean_diff, tags={"model_label": label})
        logger.debug("shadow %s on request %s (answered by %s): mean |diff| %.6f, scores %s", label,
                     job.request_id, answered_label, mean_diff, [round(x, 6) for x in shadow.scores])

    async def events(self, body: Any) -> EventsResponse:
        if self.store is None:
            raise ReadOnlyStore("no user-history store is configured (history: null in the Serve config's args): "
                                "events need history: {store: redis, url: ...}")
        result = await self.store.append([BehaviorEvent(**event.model_dump()) for event in body.events])
        for outcome, positions in (("stored", result.stored), ("duplicate", result.duplicates)):
            if positions:  # Ray's counters refuse an increment of 0
                self._events.inc(len(positions), tags={"outcome": outcome})
        return EventsResponse(stored=len(result.stored), duplicates=result.duplicates, store=self.store.name)

    def unavailable(self, field: str, message: str) -> JSONResponse:
        """503 with ``Retry-After``: a part the request needs did not answer, and a retry may succeed."""
        answer = self.rejected(503, [FieldError(field=field, message=message)])
        answer.headers["Retry-After"] = str(RETRY_AFTER_S)
        return answer

    def store_failed(self, error: HistoryStoreError) -> JSONResponse:
        """409 for events sent to a store that takes none; 503 for one that did not answer."""
        if isinstance(error, StoreUnavailable):
            return self.unavailable("store", str(error))
        return self.rejected(409, [FieldError(field="store", message=str(error))])

    def rejected(self, status: int, errors: list[FieldError]) -> JSONResponse:
        # Tag by a fixed set of top-level fields: full paths (candidates[517].item_id) or a client's unknown field
        # names would each make a new series.
        fields = sorted({metric_field(e.field) for e in errors})
        self._rejected.inc(tags={"status": str(status), "field": ",".join(fields)})
        body = error_response_body(errors)
        logger.info("rejected with %d: %s", status, body["error"][:500])
        return JSONResponse(body, status_code=status)

    async def healthz(self) -> JSONResponse:
        """Healthy when every version the split sends requests to answers (a shadow's failure is its own
        business: it is reported under ``models`` but answers no client) and the store answers."""
        router = self.router
        labels = list(dict.fromkeys([router.primary, *router.shares, *router.config.shadow]))
        answers = await asyncio.gather(*(asyncio.wait_for(self.scorers[label].ready(), HEALTH_TIMEOUT_S)
                                         for label in labels), return_exceptions=True)
        models = {label: answer if not isinstance(answer, BaseException)
                  else {"error": f"{type(answer).__name__}: {answer}"} for label, answer in zip(labels, answers)}
        failed = [label for label in router.shares if "error" in models[label]]
        if failed:
            return JSONResponse({"status": "unavailable", "models": models,
                                 "error": f"scorer of {failed[0]}: {models[failed[0]]['error']}"}, status_code=503)
        try:
            store = await self.store.health() if self.store is not None else {"store": None}
        except StoreUnavailable as error:
            return JSONResponse({"status": "unavailable", "error": str(error)}, status_code=503)
        return JSONResponse({"status": "ok", "model": models[router.primary], "models": models, "history": store})

    async def model_info(self) -> dict[str, Any]:
        """The primary version's facts on top (what a single-model client reads), then every version's, the
        routing and this replica's shadow comparisons."""
        router = self.router
        infos = await asyncio.gather(*(scorer.model_info() for scorer in self.scorers.values()),
                                     return_exceptions=True)
        versions = {label: info if not isinstance(info, BaseException) else {"error": f"{type(info).__name__}: {info}"}
                    for label, info in zip(self.scorers, infos)}
        return {**versions[router.primary], "versions": versions, "routing": router.describe(),
                "shadow": {label: c.summary() for label, c in self.comparisons.items()}}


def build_api(ingress: Ingress) -> FastAPI:
    """The FastAPI app of one ingress replica (built per replica, so routes see its limits and store)."""
    limits = ingress.limits
    ScoreRequest = score_request_model(limits)
    EventsRequest = events_request_model(limits)
    errors = {400: {"model": ErrorResponse, "description": "Body is not JSON"},
              413: {"model": ErrorResponse, "description": f"Body larger than {limits.max_body_bytes} bytes"},
              422: {"model": ErrorResponse, "description": "A field is missing, of the wrong type or over a limit"}}
    api = FastAPI(title="DIEN click-through-rate scoring",
                  description="Scores candidate items for a user with a DIEN model (Ray Serve).")
    api.add_middleware(DeclaredBodyLimit, max_bytes=limits.max_body_bytes, reject=ingress.rejected)
    if ingress.arrivals is not None:
        api.add_middleware(CountArrivals, arrivals=ingress.arrivals)
    if ingress.tokens is not None:
        # Added last, so it runs first: an unauthenticated request gets nothing else of the API's.
        api.add_middleware(TokenAuth, tokens=ingress.tokens, open_paths=ingress.auth.open_paths,
                           reject=lambda status, message: ingress.rejected(status, [FieldError(field="auth",
                                                                                               message=message)]))

    @api.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        status = 400 if any(p["type"] == "json_invalid" for p in problems) else 422
        return ingress.rejected(status, [describe(p, getattr(exc, "body", None)) for p in problems])

    @api.exception_handler(ScorerUnavailable)
    async def scorer_unavailable(request: Request, exc: ScorerUnavailable) -> JSONResponse:
        return ingress.unavailable("scorer", str(exc))

    @api.exception_handler(HistoryStoreError)
    async def store_error(request: Request, exc: HistoryStoreError) -> JSONResponse:
        return ingress.store_failed(exc)

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 413:
            return ingress.rejected(413, body_too_large(limits.max_body_bytes))
        field = {404: "path", 405: "method"}.get(exc.status_code, "body")
        return ingress.rejected(exc.status_code, [FieldError(field=field, message=str(exc.detail))])

    unavailable = {503: {"model": ErrorResponse, "description": "The user-history store did not answer; retry"}}

    @api.post(SCORE_PATH, response_model=ScoreResponse, responses={**errors, **unavailable},
              max_body_size=limits.max_body_bytes, summary="Click probabilities of the candidates for one user")
    async def score(body: ScoreRequest, response: Response) -> ScoreResponse:
        return await ingress.score(body, response)

    store_errors = {**errors, **unavailable,
                    409: {"model": ErrorResponse, "description": "The store takes no events (snapshot)"}}

    @api.post("/v1/events", response_model=EventsResponse, responses=store_errors,
              max_body_size=limits.max_body_bytes, summary="Append behaviors to their users' histories")
    async def events(body: EventsRequest) -> EventsResponse:
        return await ingress.events(body)

    @api.get("/v1/model", summary="The served model: name, version, hidden size, vocabulary sizes, metrics")
    async def model() -> dict[str, Any]:
        return await ingress.model_info()

    @api.get("/healthz", summary="200 when the scorer and the user-history store answer, 503 otherwise")
    async def healthz() -> JSONResponse:
        return await ingress.healthz()

    return api

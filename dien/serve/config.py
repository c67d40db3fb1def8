"""Typed settings of the Serve application: builder args (fixed per deploy) and the scorer's ``user_config``
(changed on running replicas, no restart).

Where a setting lives decides what changing it costs. ``args`` feed the application builder: Serve hashes
them into the code version, so any change replaces every replica (a rolling update). Replica counts,
actor resources and ``user_config`` sit in the config file's ``deployments:`` section: Serve applies them
to running replicas, so batch size, batch wait and torch threads are in ``ScorerConfig``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import (BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt, StringConstraints,
                      model_validator)

DEFAULT_VERSION = "default"
"""The label of the one version a ``model: <path>`` config serves."""
VersionLabel = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class RequestLimits(BaseModel):
    """What one ``POST /v1/score`` may carry; anything beyond is a 4xx naming the field."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    max_candidates: PositiveInt = 1000
    """Most candidates in one request (more: 422 on ``candidates``)."""
    max_history: PositiveInt = 1000
    """Most history entries in one request (more: 422 on ``history``). Entries beyond the model's
    ``max_len`` are accepted and dropped, oldest first."""
    max_id_chars: PositiveInt = 256
    """Longest ``user_id``, ``item_id`` or ``category`` string (longer: 422 on that field)."""
    max_body_bytes: PositiveInt = 1 << 20
    """Largest request body in bytes (larger: 413)."""
    max_events: PositiveInt = 1000
    """Most behaviors in one ``POST /v1/events`` (more: 422 on ``events``)."""


class AuthConfig(BaseModel):
    """Tokens the scoring API requires (``dien.serve.auth``): ``Authorization: Bearer <token>`` or
    ``X-API-Key: <token>``; 401 without one, 403 for an unknown one."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    tokens_file: str | None = None
    """A file of tokens, one per line (``#`` comments), read by each ingress replica at start; relative paths
    resolve like ``model``."""
    tokens_env: str | None = "DIEN_API_TOKENS"
    """An environment variable of the replicas holding comma-separated tokens (set it in the cluster's
    environment, a Kubernetes Secret, or the Ingress's ``runtime_env.env_vars``); None: not read."""
    open_paths: tuple[str, ...] = ("/healthz",)
    """Paths (under the application's route prefix) that need no token: probes of load balancers."""


class SnapshotStoreConfig(BaseModel):
    """The read-only user-history snapshot of a prepared dataset, loaded into each ingress replica (nothing
    to start; a behavior becomes visible with the next ``prepare_data.py`` run and deploy)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    store: Literal["snapshot"] = "snapshot"
    path: str = Field(min_length=1)
    """A prepared dataset directory, or the ``user_history.parquet`` inside one (its ``vocab/`` gives the
    stored ids their tokens). Relative paths resolve like ``model``."""


class RedisStoreConfig(BaseModel):
    """User histories in Redis, shared by every ingress replica and written by ``POST /v1/events`` and
    ``jobs/load_histories.py`` (``dien.serve.redis_history`` has the key layout)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    store: Literal["redis"] = "redis"
    url: str = "redis://127.0.0.1:6379/0"
    """``redis://[:password@]host:port/db`` (``rediss://`` for TLS)."""
    key_prefix: str = Field("dien", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    """Namespace of this application's keys: two deployments on one Redis keep apart by prefix."""
    max_len: PositiveInt = 200
    """Newest behaviors kept per user (older ones are dropped as events arrive); at least the served
    model's ``max_len``, which is what the scorer reads."""
    timeout_s: PositiveFloat = 1.0
    """Connect and read timeout of one Redis call; past it the request gets a 503 naming the store."""


HistoryStoreConfig = Annotated[Union[SnapshotStoreConfig, RedisStoreConfig], Field(discriminator="store")]


class ServeArgs(BaseModel):
    """The ``args`` of ``dien.serve.app:build_app`` (``import_path`` in ``serve_configs/*.yaml``)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: Annotated[str, Field(min_length=1)] | dict[VersionLabel, Annotated[str, Field(min_length=1)]]
    """Model artifact directory (``dien.artifacts``), or several versions side by side: ``{label: directory}``,
    each scored by a Scorer deployment of its own (``Scorer`` for the label ``default``, ``Scorer-<label>`` for
    the others: their ``deployments:`` entries); the Ingress's ``user_config.routing`` (:class:`RoutingConfig`)
    says which requests each answers. Relative paths resolve against each replica's working directory: the
    directory ``ray start --head`` or ``serve run`` was started in."""
    history: str | HistoryStoreConfig | None = None
    """The user-history store: ``{store: redis, url: ...}`` (:class:`RedisStoreConfig`), ``{store: snapshot,
    path: ...}`` or just the snapshot's path (:class:`SnapshotStoreConfig`). None: no store, every user
    without a request-given history scores with an empty history."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the scorer runs the model; auto: the GPU when Ray gave the replica one, else the CPU."""
    limits: RequestLimits = RequestLimits()
    """Request validation limits, enforced by the ingress."""
    auth: AuthConfig | None = None
    """API tokens every request must carry (but ``open_paths``); None: no authentication (a loopback-only
    local deployment). The cluster configs turn it on."""
    scoring: Literal["separate", "in_ingress"] = "separate"
    """separate: a Scorer deployment of its own (scaled, and given a GPU, apart from the HTTP tier); in_ingress:
    the ingress replica scores in its own process (no hop between replicas; its ``user_config`` then takes the
    scorer settings and its ``num_cpus`` should match ``torch_threads``)."""
    category_conflict: Literal["ignore", "reject"] = "ignore"
    """A sent category that contradicts the model's item table: ignore (score the item with its own category
    and list the position in ``corrected_categories``) or reject (422 naming the field). Categories may always
    be left out where the model has an item table."""

    @model_validator(mode="after")
    def _some_model(self) -> "ServeArgs":
        if isinstance(self.model, dict) and not self.model:
            raise ValueError("model: give an artifact directory or at least one {label: directory}")
        return self

    def versions(self) -> dict[str, str]:
        """Version label -> artifact directory, in the config's order (a single path: ``default``)."""
        return {DEFAULT_VERSION: self.model} if isinstance(self.model, str) else dict(self.model)


class ScorerConfig(BaseModel):
    """The scorer deployment's ``user_config``: applied by ``reconfigure`` without restarting replicas.

    Keep the deployment's ``max_ongoing_requests`` >= ``max_batch_size``: a replica never holds more
    requests than that, so a larger batch can never fill.
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    max_batch_size: PositiveInt = 16
    """Most requests scored together in one batch."""
    batch_wait_timeout_s: float = Field(0.005, ge=0, allow_inf_nan=False)
    """Longest wait, in seconds, for a batch to fill after its first request arrived."""
    batch_quiet_s: float = Field(0.001, ge=0, allow_inf_nan=False)
    """A batch also starts once this many seconds passed with no request joining it, so that a lone request
    does not wait out ``batch_wait_timeout_s`` for requests that are not coming (``dien.serve.batching``); as
    long as ``batch_wait_timeout_s`` or longer: the fixed window of ``@serve.batch``."""
    torch_threads: PositiveInt = 1
    """torch intra-op threads per replica (match the replica's ``num_cpus``)."""
    max_chunk_candidates: PositiveInt = 4096
    """Candidates run through attention, AUGRU and the MLP at once; bounds a batch's peak memory
    (about chunk x max_len x (hidden + 36) x 4 bytes per intermediate)."""
    score_in_thread: bool = False
    """Score each batch in a worker thread, the replica's event loop free meanwhile to take requests (for a GPU
    scorer, whose batches mostly wait on the device). False scores on the event loop: on CPU the thread only adds
    a hop and contention with the loop for the GIL, and requests arriving meanwhile simply join the next batch."""
    history_cache_mb: float = Field(64.0, ge=0, allow_inf_nan=False)
    """Memory for the encodings of recently scored histories (interest states and the AUGRU's input
    projections; about max_len x 5 x hidden x 4 bytes each), reused exactly by a user's repeat request; 0 turns
    the cache off."""


class RoutingConfig(BaseModel):
    """Which served version answers a request, and which score a copy of it (the Ingress's
    ``user_config.routing``: a change applies to running replicas, so a promotion or a rollback is a
    ``serve deploy`` of the edited file, no restart)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    split: dict[VersionLabel, NonNegativeFloat] | None = None
    """Weight of each version label (any positive total; left-out versions get none). A request with a
    ``user_id`` lands by a hash of it, so a user stays on one version while the split stays, and moving weight
    moves only the users it must. None: every request to the first version of ``model``. A request that names
    a ``version`` gets that one."""
    shadow: list[VersionLabel] = []
    """Versions that also score a copy of the split's requests, after the answer is sent: their scores are
    compared with the answered ones (``GET /v1/model``, the ``dien_shadow_*`` metrics, DEBUG logs) and never
    returned."""
    shadow_fraction: float = Field(1.0, ge=0, le=1, allow_inf_nan=False)
    """Share of the requests the shadows score (by a hash of the user, so the same users are compared)."""

    def check(self, labels: list[str]) -> None:
        """ValueError naming a version this application does not serve, or a split with no weight."""
        served = ", ".join(labels)
        for where, named in (("split", list(self.split or {})), ("shadow", self.shadow)):
            unknown = [label for label in named if label not in labels]
            if unknown:
                raise ValueError(f"routing.{where} names {', '.join(map(repr, unknown))}, which this application "
                                 f"does not serve (args.model has: {served})")
        if self.split is not None and sum(self.split.values()) <= 0:
            raise ValueError("routing.split gives no version any weight: at least one must be above 0")


class ForwardingConfig(BaseModel):
    """How an ingress replica sends requests to a Scorer deployment (``scoring: separate``): the requests that
    arrive while its calls are out leave together in the next one (``dien.serve.forwarding``)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    max_calls_in_flight: PositiveInt = 2
    """Calls to one version's Scorer deployment an ingress replica has outstanding at once; at least its
    replica count, so that none idles while requests wait here."""
    max_jobs_per_call: PositiveInt = 16
    """Most requests one call carries (1: a call per request). The Scorer scores them in batches of its own
    ``max_batch_size``, merged with other calls'."""


class IngressConfig(ScorerConfig):
    """The Ingress deployment's ``user_config``: ``routing``, ``forwarding`` with Scorer deployments, and with
    ``scoring: in_ingress`` the scorer settings of :class:`ScorerConfig` (with a Scorer deployment those belong
    in its own ``user_config``)."""

    routing: RoutingConfig = RoutingConfig()
    """Traffic split and shadows between the versions of ``args.model``."""
    forwarding: ForwardingConfig = ForwardingConfig()
    """How requests share the calls to the Scorer deployments (``scoring: separate`` only)."""

    def scorer_settings(self) -> dict[str, object] | None:
        """The :class:`ScorerConfig` fields this config sets; None when it sets none."""
        chosen = self.model_fields_set - {"routing", "forwarding"}
        return self.model_dump(exclude={"routing", "forwarding"}) if chosen else None


def resolve_path(value: str, what: str) -> Path:
    """``value`` as an absolute path that exists, relative ones taken from the current working directory;
    a missing path is an error naming ``what``, the path as given and where it was looked for."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    if not path.exists():
        raise FileNotFoundError(
            f"{what} not found: {path} (given as {value!r}; relative paths resolve against this replica's "
            f"working directory {Path.cwd()}, the directory `ray start --head` or `serve run` was started "
            "in: give an absolute path or start the cluster from the repository root)")
    return path

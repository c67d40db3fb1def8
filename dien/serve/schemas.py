"""The HTTP API's bodies, and the error format every rejected request gets.

The request models are built from the deployment's :class:`RequestLimits`, so the limits are checked in
the same pass as the types and show up in the OpenAPI schema at ``/docs``. A list of behaviors (history,
candidates) comes as objects or, more compactly, as columns; both forms validate alike. Unknown fields are rejected:
a misspelled ``histroy`` would otherwise be dropped and the request silently scored with the stored
history instead of the one the client sent.
"""

from typing import Annotated, Any, Sequence, Union

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag, create_model,
                      model_validator)

from dien.serve.config import RequestLimits


OBJECTS, COLUMNS = "objects", "columns"
"""The two forms of a list of behaviors: ``[{"item_id": ..., "category": ...}, ...]`` or the compact
``{"item_id": [...], "category": [...]}`` (cheaper to build, send and parse)."""


def _form(value: Any) -> str:
    return COLUMNS if isinstance(value, dict) else OBJECTS


class BehaviorColumns(BaseModel):
    """Behaviors as columns: ``category`` as long as ``item_id``, its entries null where the item table should
    give the category, or left out altogether."""

    model_config = ConfigDict(extra="forbid")
    item_id: list[str]
    category: list[str | None] | None = None

    @model_validator(mode="after")
    def same_length(self) -> "BehaviorColumns":
        if self.category is not None and len(self.category) != len(self.item_id):
            raise ValueError(f"category has {len(self.category)} entries for {len(self.item_id)} item_id entries "
                             "(one per item, null for the item table's)")
        return self


def score_request_model(limits: RequestLimits) -> type[BaseModel]:
    """The ``POST /v1/score`` body model for these limits."""
    Token = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_id_chars)]

    class Behavior(BaseModel):
        """One item, with its category or without (the model's item table gives it)."""

        model_config = ConfigDict(extra="forbid")
        item_id: Token
        category: Token | None = None

    def behaviors(name: str, min_length: int, max_length: int) -> Any:
        """A list of behaviors in either form, the same limits on both; ``name`` names the columns model."""
        columns = create_model(name, __base__=BehaviorColumns, __doc__=BehaviorColumns.__doc__,
                               item_id=(list[Token], Field(min_length=min_length, max_length=max_length)),
                               category=(list[Token | None] | None, None))
        objects = Annotated[list[Behavior], Field(min_length=min_length, max_length=max_length), Tag(OBJECTS)]
        return Annotated[Union[objects, Annotated[columns, Tag(COLUMNS)]], Discriminator(_form)]

    History = behaviors("HistoryColumns", 0, limits.max_history)
    Candidates = behaviors("CandidateColumns", 1, limits.max_candidates)

    class ScoreRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user_id: Token | None = Field(
            None, description="The user; their stored history is used unless `history` is given. "
                              "Required when `history` is not given.")
        history: History | None = Field(
            None, description="The user's behaviors, oldest first; only the model's max_len most recent are used. "
                              "Overrides the stored history; [] scores without history.")
        candidates: Candidates = Field(
            description="Items to score, in response order.")
        version: Token | None = Field(
            None, description="The served version (label) to score with; `GET /v1/model` lists them under "
                              "`versions`. Left out: the configured traffic split picks one.")

    return ScoreRequest


def events_request_model(limits: RequestLimits) -> type[BaseModel]:
    """The ``POST /v1/events`` body model for these limits."""
    Token = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_id_chars)]

    class Event(BaseModel):
        """One behavior of one user."""

        model_config = ConfigDict(extra="forbid")
        user_id: Token
        item_id: Token
        timestamp: float = Field(ge=0, allow_inf_nan=False, description="Seconds since the epoch; the history "
                                 "is kept in timestamp order whatever order events arrive in.")
        category: Token | None = Field(None, description="Left out: the model's item table gives it.")
        event_type: Token | None = None
        event_id: Token | None = Field(
            None, description="Applied once per user: a repeat is reported in `duplicates`. Left out: the "
                              "event's other fields are its id, so an exact repeat is a duplicate too.")

    class EventsRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        events: list[Event] = Field(min_length=1, max_length=limits.max_events,
                                    description="Behaviors to append to their users' histories, any order.")

    return EventsRequest


class EventsResponse(BaseModel):
    stored: int = Field(description="Events appended to their users' histories.")
    duplicates: list[int] = Field(
        default_factory=list, description="Positions (0-based) of the events already applied (same user and "
                                          "event id); they changed nothing.")
    store: str = Field(description="The store that holds the histories.")


def item_and_category_lists(behaviors: Any) -> tuple[list[str], list[str | None]]:
    """(item ids, categories) of a validated list of behaviors in either form."""
    if isinstance(behaviors, list):
        return [b.item_id for b in behaviors], [b.category for b in behaviors]
    return behaviors.item_id, behaviors.category or [None] * len(behaviors.item_id)


class ModelRef(BaseModel):
    name: str
    version: str = Field(description="The artifact's version (a prefix of its weights' SHA-256).")
    label: str = Field(description="The version label it is served as (`args.model` of the Serve config).")


class ScoreResponse(BaseModel):
    scores: list[float] = Field(description="Click probabilities in the order of the request's candidates.")
    model: ModelRef = Field(description="The model that scored.")
    history_length: int = Field(description="Behaviors the model saw (0: an unknown user or an empty history).")
    unknown_candidates: list[int] = Field(
        default_factory=list, description="Positions (0-based) of the candidates whose item the model has never "
                                          "seen; they score as the out-of-vocabulary item, near the base rate.")
    corrected_categories: list[int] = Field(
        default_factory=list, description="Positions (0-based) of the candidates sent with a category other than "
                                          "the model's item table gives them; they were scored with the table's.")


class FieldError(BaseModel):
    field: str = Field(description="Where in the request, e.g. `candidates[3].item_id`; `body` for the whole.")
    message: str


class ErrorResponse(BaseModel):
    error: str = Field(description="Every problem in one line.")
    detail: list[FieldError]


def field_path(loc: Sequence[Any]) -> str:
    """A pydantic/FastAPI error location as a path: ("body", "candidates", 3, "item_id") -> candidates[3].item_id."""
    parts = [p for p in (loc[1:] if loc and loc[0] == "body" else loc) if p not in (OBJECTS, COLUMNS)]
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "body"


def _where(document: str, position: int) -> str:
    """Line, column and the text around ``position`` of ``document``, for a parse error."""
    line = document.count("\n", 0, position) + 1
    column = position - (document.rfind("\n", 0, position) + 1) + 1
    near = document[max(0, position - 10):position + 10]
    return f"line {line}, column {column} (character {position}), near {near!r}"


def describe(error: dict[str, Any], document: Any = None) -> FieldError:
    """One FastAPI validation error as a :class:`FieldError` with a message a client can act on; ``document``:
    the body as text, which a JSON syntax error is located in."""
    if error["type"] == "json_invalid":
        reason, position = error.get("ctx", {}).get("error", error["msg"]), error["loc"][-1]
        where = _where(document, position) if isinstance(document, str) else f"character {position}"
        return FieldError(field="body", message=f"not valid JSON: {reason} at {where}")
    if isinstance(error.get("input"), (bytes, bytearray)):
        # FastAPI hands over the raw bytes when the Content-Type is not JSON.
        return FieldError(field="body", message="expected a JSON object sent with Content-Type: application/json")
    path = field_path(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    elif error["type"] == "list_type" and error["loc"][-1] == OBJECTS:
        message = ('expected a list of {"item_id", "category"} objects or {"item_id": [...], "category": [...]} '
                   "columns")
    return FieldError(field=path, message=message)


MAX_LISTED_ERRORS = 20
"""Problems an error response lists; a body with thousands of bad fields gets a bounded answer."""
METRIC_FIELDS = ("user_id", "history", "candidates", "events", "store", "scorer", "auth", "body", "path",
                 "method")
"""The values a rejection's ``field`` metric tag takes (anything else counts as ``other``): a client's field
names must not become new metric series."""


def error_response_body(errors: list[FieldError]) -> dict[str, Any]:
    """The 4xx body: the first :data:`MAX_LISTED_ERRORS` problems, and how many more there were."""
    listed = errors[:MAX_LISTED_ERRORS]
    summary = "; ".join(f"{e.field}: {e.message}" for e in listed)
    if len(errors) > len(listed):
        summary += f"; and {len(errors) - len(listed)} more problems"
    return ErrorResponse(error=summary, detail=listed).model_dump()


def metric_field(field: str) -> str:
    """A problem's field as a metric tag value: its top-level field if it is one of :data:`METRIC_FIELDS`."""
    top = field.split("[")[0].split(".")[0]
    return top if top in METRIC_FIELDS else "other"

"""The admin API: routing policies, promotion, rollback and model versions, behind a token.

    GET    /admin/models                                   every model: policy, window, history
    GET    /admin/models/{model}
    GET    /admin/models/{model}/drift                     each version's last drift judgement
    PUT    /admin/models/{model}/routing                   replace the routing section
    PATCH  /admin/models/{model}/routing                   change the fields given
    POST   /admin/models/{model}/promote                   {"version": "1"}; default the canary
    POST   /admin/models/{model}/rollback                  {"reason": "..."}: canary weight to 0
    POST   /admin/models/{model}/versions/{version}/load   | unload | reload; no body, or {}

Bodies are checked whole: a key a route does not take is named as unknown in the 400, so a
misspelt field is never mistaken for an absent one.

Every call carries `Authorization: Bearer <token>` with a token of the `admin` scope (see
service/tokens.py for where tokens come from and their scopes). A missing or malformed header
is 401, a wrong token or one without the scope 403, neither saying more. The routes stay out of
the anonymous /openapi.json. Each change is logged with who made it (token name and client
address) and the policy before and after, and kept in the model's history.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.responses import Response

from service.lifecycle import Lifecycle
from service.pipeline.pipeline import Pipeline
from service.protocol import json_codec
from service.protocol.errors import InvalidInput
from service.settings import Settings
from service.tokens import ADMIN, Tokens
from service.validation import describe
from service.versions import VersionName, check_version

JSON = "application/json"
# Admin bodies are a routing section at most.
MAX_BODY_BYTES = 64 << 10


class PromoteBody(BaseModel):
    # `{"version": 2}` is as good as `{"version": "2"}`.
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    # Absent: the canary's version.
    version: VersionName | None = None


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    reason: str | None = None


class NoBody(BaseModel):
    """Load, unload and reload take nothing but their path."""

    model_config = ConfigDict(extra="forbid")


B = TypeVar("B", bound=BaseModel)


def install_admin(app: FastAPI, settings: Settings) -> None:
    """Mount the admin routes on `app` (the HTTP front answers 401/403 for them)."""
    app.include_router(admin_router(Tokens.load(settings)))


def caller(request: Request, tokens: Tokens) -> str:
    """Who is calling, `name@address`, if their token has the admin scope; Unauthenticated
    or Forbidden otherwise."""
    found = tokens.check(request.headers.get("authorization"), ADMIN)
    client = request.client.host if request.client is not None else "unknown"
    return f"{found}@{client}"


def admin_router(tokens: Tokens) -> APIRouter:
    router = APIRouter(prefix="/admin", include_in_schema=False)

    def lifecycle(request: Request) -> Lifecycle:
        found: Lifecycle = request.app.state.lifecycle
        return found

    async def document(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise InvalidInput(f"admin request bodies are at most {MAX_BODY_BYTES} bytes")
        doc = json_codec.loads(raw) if raw.strip() else {}
        if not isinstance(doc, dict):
            raise InvalidInput("the body must be a JSON object")
        return doc

    async def body(request: Request, schema: type[B]) -> B:
        try:
            return schema.model_validate(await document(request))
        except ValidationError as exc:
            raise InvalidInput(f"invalid body: {describe(exc)}") from None

    async def answer(request: Request, model: str) -> Response:
        doc = await lifecycle(request).describe(model)
        return Response(json_codec.dumps(doc), media_type=JSON)

    @router.get("/models")
    async def models(request: Request) -> Response:
        caller(request, tokens)
        life = lifecycle(request)
        docs = [await life.describe(model) for model in life.models()]
        return Response(json_codec.dumps({"models": docs}), media_type=JSON)

    @router.get("/models/{model}")
    async def model(request: Request, model: str) -> Response:
        caller(request, tokens)
        lifecycle(request).policy(model)
        return await answer(request, model)

    @router.get("/models/{model}/drift")
    async def drift(request: Request, model: str) -> Response:
        caller(request, tokens)
        pipeline: Pipeline = request.app.state.pipeline
        versions = [
            {"version": s.version, "monitored": False} if s.drift is None else s.drift.describe()
            for s in pipeline.registry.model(model).versions.values()
        ]
        doc = {"model": model, "versions": versions}
        return Response(json_codec.dumps(doc), media_type=JSON)

    @router.put("/models/{model}/routing")
    @router.patch("/models/{model}/routing")
    async def routing(request: Request, model: str) -> Response:
        who = caller(request, tokens)
        # A routing section, whole (PUT) or in part (PATCH): the lifecycle checks it against
        # RoutingConfig, which forbids unknown keys at every level, once merged with the policy.
        section = await document(request)
        await lifecycle(request).set_routing(model, who, section, merge=request.method == "PATCH")
        return await answer(request, model)

    @router.post("/models/{model}/promote")
    async def promote(request: Request, model: str) -> Response:
        who = caller(request, tokens)
        promote = await body(request, PromoteBody)
        await lifecycle(request).promote(model, who, promote.version)
        return await answer(request, model)

    @router.post("/models/{model}/rollback")
    async def rollback(request: Request, model: str) -> Response:
        who = caller(request, tokens)
        reason = (await body(request, RollbackBody)).reason or "rolled back by hand"
        await lifecycle(request).rollback(model, who, reason)
        return await answer(request, model)

    @router.post("/models/{model}/versions/{version}/{action}")
    async def version_action(request: Request, model: str, version: str, action: str) -> Response:
        who = caller(request, tokens)
        life = lifecycle(request)
        try:
            check_version(version)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        actions = {"load": life.load, "unload": life.unload, "reload": life.reload}
        if action not in actions:
            raise InvalidInput(f"unknown action '{action}'; use load, unload or reload")
        await body(request, NoBody)
        await actions[action](model, version, who)
        return await answer(request, model)

    return router

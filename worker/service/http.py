"""The HTTP API of ``python -m worker serve``: check a post before publishing it, add it, delete it.

``POST /v1/check`` (read-only: would this post be flagged, against what), ``POST /v1/documents`` (check
and add), ``DELETE /v1/documents/{tenant}/{id}``, ``GET /healthz``; the OpenAPI description at
``/openapi.json`` (pages at ``/docs``). Every answer comes from the stream's batch step through
``worker.service.direct.DirectStep``; this module only speaks HTTP.

- Keys: ``Authorization: Bearer <key>``; each key belongs to one tenant (``TWINFLAG_HTTP__KEYS``) and
  sees and changes only that tenant's documents (another tenant named in a request: 403).
- Bounds: the body (``max_body_bytes``: 413, counted as it arrives, not trusted from Content-Length),
  the text (``max_text_chars``: 422), the wait (``timeout_s``: 503 ``timeout``) and the queue
  (``max_pending``: 503 ``busy``). Every error is JSON: ``{"error": {"code", "message"}}``.
- Batching (``worker.service.http_batch``): requests wait in one queue; one thread drains it and
  answers everything waiting with one batch step per kind (all the checks together: one encoder call,
  one index search), so throughput grows with concurrency instead of each request paying its own step.
- Logs: one ``http.batch`` event per step (counts, milliseconds); never a text, a key or an id.

FastAPI (on Starlette, served by uvicorn): request and response models (``worker.service.http_schema``)
are pydantic models, which the worker already uses; validation errors and the OpenAPI description come
from them, and it is widely used and maintained; the standard library's ``http.server`` (the status
endpoint's) has neither.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at run time,
and the dependencies they name are local to ``create_app``.
"""

import asyncio
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from worker import __version__
from worker.core.logs import get_logger
from worker.core.messages import Deletion
from worker.core.outgoing import DeadLetter, Decision
from worker.service.direct import CHECK_ID, Answer, DirectStep, Post
from worker.service.http_batch import Batcher
from worker.service.http_schema import (
    ApiError,
    CheckRequest,
    DecisionOut,
    Deleted,
    DocumentRequest,
    ErrorOut,
    VerdictOut,
    VerdictRequest,
    decision_out,
    error_response,
)
from worker.service.settings import HttpSettings

log = get_logger("http")

# -------------------------------------------------------------------------------------------- limits


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes gets 413, whatever its Content-Length says."""

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, receive, send)
            return
        seen, over = 0, False

        async def counted() -> MutableMapping[str, Any]:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded(message: MutableMapping[str, Any]) -> None:
            if not over:
                await send(message)

        await self.app(scope, counted, guarded)
        if over:
            await self._refuse(scope, receive, send)

    async def _refuse(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        response = error_response(413, "too_large", f"request body over {self.limit} bytes")
        await response(scope, receive, send)


# ----------------------------------------------------------------------------------------------- app


def create_app(direct: DirectStep, settings: HttpSettings) -> FastAPI:
    """The API over one ``DirectStep``; its batching thread runs while the app is being served."""
    batcher = Batcher(direct, settings.max_batch, settings.max_pending)
    keys = {tenant: key.get_secret_value().encode() for tenant, key in settings.keys.items()}
    bearer = HTTPBearer(auto_error=False, description="The tenant's API key (TWINFLAG_HTTP__KEYS).")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        log.info("http.started", tenants=len(keys), model=direct.model_version)
        yield
        await asyncio.to_thread(batcher.stop, settings.timeout_s)

    app = FastAPI(
        title="twinflag",
        version=__version__,
        description="Near-duplicate checks against the worker's index: would this post be flagged?",
        lifespan=lifespan,
        responses={code: {"model": ErrorOut} for code in (400, 401, 403, 413, 422, 503)},
    )
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    def key_tenant(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
        given = b"" if credentials is None else credentials.credentials.encode()
        found = None
        for tenant, key in keys.items():  # every key compared, in constant time each
            if hmac.compare_digest(given, key):
                found = tenant
        if found is None:
            raise ApiError(401, "unauthorized", "a valid API key is needed: Authorization: Bearer <key>")
        return found

    def tenant_of(requested: str | None, own: str) -> str:
        if requested is not None and requested != own:
            raise ApiError(403, "forbidden", "this key belongs to another tenant")
        return own

    def bounded(text: str) -> None:
        if len(text) > settings.max_text_chars:
            raise ApiError(422, "text_too_long", f"text over {settings.max_text_chars} characters")

    async def answer(kind: Literal["check", "write"], item: Post | Deletion) -> Answer | None:
        future = batcher.submit(kind, item)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), settings.timeout_s)
        except TimeoutError:
            raise ApiError(503, "timeout", f"no answer within {settings.timeout_s} s") from None

    def refused(letter: DeadLetter) -> ApiError:
        return ApiError(422, letter.code, letter.reason)

    async def decided(kind: Literal["check", "write"], post: Post) -> DecisionOut:
        """The post's decision (added to the index for ``write``), or a 422 with its dead letter's code."""
        found = await answer(kind, post)
        if isinstance(found, DeadLetter):
            raise refused(found)
        assert isinstance(found, Decision)
        return decision_out(found, added=kind == "write")

    @app.post("/v1/check", response_model=DecisionOut, summary="Would this post be flagged? (read-only)")
    async def check(body: CheckRequest, own: Annotated[str, Depends(key_tenant)]) -> DecisionOut:
        bounded(body.text)  # before the tenant: a long text is a 422 whoever sends it
        return await decided("check", Post(body.text, tenant_of(body.tenant, own), body.id or CHECK_ID))

    @app.post("/v1/documents", response_model=DecisionOut, summary="Check a post and add it")
    async def add(body: DocumentRequest, own: Annotated[str, Depends(key_tenant)]) -> DecisionOut:
        bounded(body.text)
        post = Post(body.text, tenant_of(body.tenant, own), body.id, body.created_at)
        return await decided("write", post)

    @app.delete("/v1/documents/{tenant}/{doc_id:path}", response_model=Deleted, summary="Remove a post")
    async def delete(tenant: str, doc_id: str, own: Annotated[str, Depends(key_tenant)]) -> Deleted:
        tenant = tenant_of(tenant, own)
        if not await asyncio.to_thread(direct.exists, tenant, doc_id):
            raise ApiError(404, "not_found", "no such document in this tenant")
        await answer("write", Deletion(id=doc_id, tenant=tenant))
        return Deleted(tenant=tenant, id=doc_id)

    @app.post("/v1/verdicts", response_model=VerdictOut, summary="A moderator's verdict on a pair")
    async def review(body: VerdictRequest, own: Annotated[str, Depends(key_tenant)]) -> VerdictOut:
        for text in (body.text, body.duplicate_text):
            if text is not None:
                bounded(text)
        row = body.model_dump(exclude_none=True) | {"tenant": tenant_of(body.tenant, own)}
        row.setdefault("at", datetime.now(UTC).isoformat())
        value = json.dumps(row, ensure_ascii=False).encode()
        refusals, points = await asyncio.to_thread(direct.review, [value])
        if refusals[0] is not None:
            raise refused(refusals[0])
        return VerdictOut(points={p.tenant: p.point for p in points})

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        code = error.code if isinstance(error, ApiError) else _CODES.get(error.status_code, "error")
        return error_response(error.status_code, code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = list(error.errors())
        if any(p.get("type") == "json_invalid" for p in problems):
            return error_response(400, "invalid_json", "the body is not JSON")
        where = "; ".join(  # the location and the message, never the input (it may be the text)
            f"{'.'.join(str(part) for part in p.get('loc', ()))}: {p.get('msg', '')}" for p in problems
        )
        return error_response(422, "invalid_request", where[:1000])

    @app.exception_handler(Exception)
    async def failed(_request: Request, _error: Exception) -> JSONResponse:
        return error_response(500, "internal", "the request failed; see the worker's log")

    return app


_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


def serve(direct: DirectStep, settings: HttpSettings) -> None:
    """Serve the API until SIGTERM or SIGINT (uvicorn's handlers: requests in flight are finished)."""
    import uvicorn

    config = uvicorn.Config(
        create_app(direct, settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # structlog's configuration stands; uvicorn's own lines go through logging
        access_log=False,  # paths carry tenants and ids
        timeout_graceful_shutdown=max(1, round(settings.timeout_s)),
        server_header=False,
    )
    log.info("http.listening", host=settings.host, port=settings.port)
    uvicorn.Server(config).run()

"""The codec endpoint the Temporal UI and CLI call to show decoded payloads to authorised users.

``POST /decode`` and ``POST /encode`` take and return ``{"payloads": [...]}`` in Temporal's JSON
form of ``Payloads``, as the UI's codec server setting and ``temporal --codec-endpoint`` expect.
Every request must carry a credential (``Authorization: Bearer``: an API key or a JWT, such as
the UI's own access token) that grants the ``codec`` action; others get 401 or 403 and nothing
decoded. Browsers reach it only from the origins given (CORS); a namespace outside the ones
served is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payloads

from vecmigrate.errors import KeyRingError, TamperError
from vecmigrate.security.credentials import AuthenticationError, Credentials, bearer
from vecmigrate.security.keyring import KeyRing, KeyRingSource
from vecmigrate.serving.asgi import BodyGuard
from vecmigrate.workers.codec import EncryptionCodec

MAX_BODY = 8 * 1024 * 1024
ALLOWED_HEADERS = ["Content-Type", "X-Namespace", "Authorization"]


def codec_app(
    keys: KeyRingSource | KeyRing,
    credentials: Credentials,
    *,
    origins: Iterable[str] = (),
    namespaces: Iterable[str] | None = None,
) -> Any:
    """The codec server's ASGI app."""
    codec = EncryptionCodec(keys)
    served = set(namespaces) if namespaces is not None else None

    async def handle(request: Request) -> Response:
        token = bearer(request.headers.get("authorization"), request.headers.get("x-api-key"))
        try:
            principal = credentials.authenticate(token)
        except AuthenticationError as exc:
            return JSONResponse(
                {"error": str(exc)}, 401, headers={"WWW-Authenticate": 'Bearer realm="codec"'}
            )
        namespace = request.headers.get("x-namespace")
        if not principal.allows("codec") or (served is not None and namespace not in served):
            return JSONResponse({"error": "forbidden"}, 403)
        try:
            payloads = json_format.Parse(await request.body(), Payloads())
        except (json_format.ParseError, ValueError, RecursionError):
            return JSONResponse({"error": 'expected {"payloads": [...]}'}, 400)
        try:
            if request.url.path.endswith("/encode"):
                result = await codec.encode(payloads.payloads)
            else:
                result = await codec.decode(payloads.payloads)
        except (TamperError, KeyRingError) as exc:
            return JSONResponse({"error": str(exc)}, 422)
        body = json_format.MessageToJson(
            Payloads(payloads=result), always_print_fields_with_no_presence=True
        )
        return Response(body, media_type="application/json")

    async def health(_: Request) -> Response:
        return Response(json.dumps({"ok": True}), media_type="application/json")

    return BodyGuard(
        Starlette(
            routes=[
                Route("/encode", handle, methods=["POST"]),
                Route("/decode", handle, methods=["POST"]),
                Route("/health", health, methods=["GET"]),
            ],
            middleware=[
                Middleware(
                    CORSMiddleware,
                    allow_origins=list(origins),
                    allow_methods=["POST"],
                    allow_headers=ALLOWED_HEADERS,
                    allow_credentials=True,
                    max_age=600,
                )
            ],
        ),
        max_body=MAX_BODY,
        read_timeout=30.0,
    )

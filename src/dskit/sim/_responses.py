"""OpenAI Responses (`POST /responses`): placeholder until the translation lands."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dskit.sim._request import RequestError

if TYPE_CHECKING:
    from dskit.sim._app import Request, SimApp
    from dskit.sim._stream import Send


async def responses(app: SimApp, request: Request, send: Send) -> None:
    raise RequestError(404, f"Not Found: {request.path}")

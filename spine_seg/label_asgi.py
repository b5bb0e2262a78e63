"""MONAI Label's FastAPI app with error responses that say what went wrong (runs in the label venv).

MONAI Label 0.8.5 registers no exception handlers, so every failed request is a bare "500 Internal Server
Error". ``make label-serve`` starts uvicorn on this module's ``app`` instead (``--uvicorn_app``): MONAI
Label's own errors (unknown model, image not found) become 400/404 with their message, anything else a
500 naming the exception and its message (for example the bundle's "not a 2D grayscale radiograph").
An inference request for a model that the app did not load (a bundle without weights still gets
registered, half-initialised) is answered 404 before MONAI Label fails on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from monailabel.app import app
from monailabel.interfaces.exception import ImageNotFoundException, MONAILabelException
from monailabel.interfaces.utils.app import app_instance

__all__ = ["app"]


@app.exception_handler(MONAILabelException)
async def monailabel_error(request: Request, exc: MONAILabelException) -> JSONResponse:
    status = 404 if isinstance(exc, ImageNotFoundException) else 400
    return JSONResponse(status_code=status, content={"error": str(exc.error), "detail": exc.msg})


@app.exception_handler(Exception)
async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    detail = f"{request.method} {request.url.path}?{request.url.query}: {type(exc).__name__}: {exc}"
    return JSONResponse(status_code=500, content={"error": type(exc).__name__, "detail": detail})


@cache
def loaded_models() -> frozenset[str]:
    """The models the app loaded; fixed once it has started. ``info()`` also counts the datastore, so it is
    asked once, not on every request."""
    return frozenset(app_instance().info().get("models", {}))


@app.middleware("http")
async def unloaded_model(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    parts = request.url.path.strip("/").split("/")
    if len(parts) == 2 and parts[0] == "infer" and parts[1] not in loaded_models():
        detail = (f"no model '{parts[1]}' is loaded: its bundle has no weights (models/model.pt) or failed to "
                  "load; see the server log")
        return JSONResponse(status_code=404, content={"error": "MODEL_NOT_LOADED", "detail": detail})
    return await call_next(request)

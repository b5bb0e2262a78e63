"""MONAI Label's FastAPI app with error responses that say what went wrong (runs in the label venv).

MONAI Label 0.8.5 registers no exception handlers, so every failed request is a bare "500 Internal Server
Error". ``make label-serve`` starts uvicorn on this module's ``app`` instead (``--uvicorn_app``): MONAI
Label's own errors (unknown model, image not found) become 400/404 with their message, anything else a
500 naming the exception and its message (for example the bundle's "not a 2D grayscale radiograph").
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse
from monailabel.app import app
from monailabel.interfaces.exception import ImageNotFoundException, MONAILabelException

__all__ = ["app"]


@app.exception_handler(MONAILabelException)
async def monailabel_error(request: Request, exc: MONAILabelException) -> JSONResponse:
    status = 404 if isinstance(exc, ImageNotFoundException) else 400
    return JSONResponse(status_code=status, content={"error": str(exc.error), "detail": exc.msg})


@app.exception_handler(Exception)
async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    detail = f"{request.method} {request.url.path}?{request.url.query}: {type(exc).__name__}: {exc}"
    return JSONResponse(status_code=500, content={"error": type(exc).__name__, "detail": detail})

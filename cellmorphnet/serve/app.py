"""The FastAPI application of ``cellmorphnet serve``: the REST API (``/v1``), health checks, and the web page.

Built around a ``service.ModelService`` that is already loaded, assembled here from one router per area
(``model_routes``, ``review_routes``), the token as a dependency and the host and origin checks (``security``),
and the body limits (``uploads``). The service, the limits and the review store live in the application's state,
where the routes' dependencies find them. Uploads are read into memory (bounded by the request limit) and parsed
there; nothing uploaded is written to disk.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.responses import FileResponse, JSONResponse

from cellmorphnet.errors import Conflict, InvalidData, LimitExceeded, NotFound, TimeLimit
from cellmorphnet.serve import desk_routes, model_routes, review_routes
from cellmorphnet.serve.security import OriginCheck, bearer_guard
from cellmorphnet.serve.service import ModelService
from cellmorphnet.serve.settings import Limits
from cellmorphnet.serve.uploads import BodyLimit, Refused

STATIC = resources.files(__package__) / "static"
API_VERSION = "v1"


def create_app(service: ModelService, *, token: str | None = None, cors_origins: list[str] | None = None,
               limits: Limits | None = None, hosts: list[str] | None = None, reviews=None,
               accounts=None, desk=None) -> FastAPI:  # fmt: skip
    """The application: ``service`` answers, ``token`` (if any) guards ``/v1``, ``cors_origins`` opens CORS (and
    are the only other origins whose POSTs are served), ``limits`` bound each request (default: the service's),
    ``hosts`` are the ``Host`` values it answers (``trusted_hosts``; None: any), ``reviews`` (a
    ``reviews.ReviewStore``) keeps cases, cells and reviews (None: no review routes), ``accounts`` (a
    ``serve.accounts.Accounts``) names who may do what once it holds an account, ``desk`` (a ``serve.desk.Desk``)
    adapts and switches the served model (None: no such routes)."""
    limits = limits or service.limits
    from cellmorphnet import __version__

    check_token = bearer_guard(token, accounts)  # (an empty token is refused here)

    app = FastAPI(
        title="cellmorphnet",
        version=__version__,
        description="Blood-cell classification with a trained cellmorphnet run. Research tool: not a medical "
        "device. The files of one request are classified as one set, as `cellmorphnet infer` classifies the "
        "files given to it together.",
    )
    app.add_middleware(BodyLimit, limits=limits)
    app.add_middleware(OriginCheck, allowed=cors_origins)  # (the last added runs first)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])  # fmt: skip
    if hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)

    @app.exception_handler(Refused)
    async def refused(_request, exc: Refused):
        headers = {"Connection": "close"} if exc.close else None
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(LimitExceeded)
    async def over_limit(_request, exc: LimitExceeded):
        return JSONResponse({"detail": exc.message}, status_code=413)

    @app.exception_handler(TimeLimit)
    async def too_long(_request, exc: TimeLimit):
        return JSONResponse({"detail": exc.message}, status_code=503, headers={"Retry-After": "10"})

    @app.exception_handler(InvalidData)
    async def invalid(_request, exc: InvalidData):
        detail = exc.message + (f" {exc.hint}" if exc.hint else "")
        status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 422
        return JSONResponse({"detail": detail}, status_code=status)

    # HEAD beside GET, out of the schema: one route with both methods gives both one operation ID in /openapi.json
    @app.head("/healthz", include_in_schema=False)
    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.head("/readyz", include_in_schema=False)
    @app.get("/readyz", tags=["health"])
    def readyz():
        """The model is loaded and warmed up, and a thread is free to decode a large request (503 until then, and
        while every decoding thread is busy: send traffic elsewhere). ``/healthz`` only says the process lives."""
        if not service.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        if service.saturated:
            return JSONResponse({"status": "saturated"}, status_code=503)
        return {"status": "ready"}

    app.state.service, app.state.limits, app.state.reviews, app.state.desk = service, limits, reviews, desk
    if desk is not None:
        desk.state = app.state  # where it swaps the served model
    v1 = APIRouter(prefix=f"/{API_VERSION}", dependencies=[Depends(check_token)])
    v1.include_router(model_routes.router)
    if desk is not None:
        v1.include_router(desk_routes.router)
    else:  # who is signed in, on any server
        v1.add_api_route("/me", desk_routes.me, methods=["GET"], tags=["desk"])
    if reviews is not None:
        v1.include_router(review_routes.router)
    app.include_router(v1)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def index():
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    @app.api_route("/review", methods=["GET", "HEAD"], include_in_schema=False)
    def review_page():
        return FileResponse(str(STATIC / "review.html"), media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():  # browsers ask for it before reading the page's <link rel="icon">
        return FileResponse(str(STATIC / "favicon.svg"), media_type="image/svg+xml")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        allowed = {p.name: p for p in STATIC.iterdir() if p.is_file()}
        if name not in allowed:
            raise HTTPException(404, "Not found.")
        return FileResponse(str(allowed[name]))

    return app

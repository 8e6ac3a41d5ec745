"""Who is signed in, adapting the served model from the page, and choosing the served model (``serve.desk``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from cellmorphnet.errors import NotFound
from cellmorphnet.serve.security import require

router = APIRouter(tags=["desk"])


def get_desk(request: Request):
    return request.app.state.desk


Desk = Annotated[Any, Depends(get_desk)]


def account_name(request: Request) -> str | None:
    account = getattr(request.state, "account", None)
    return None if account is None else account.name


class AdaptBody(BaseModel):
    cases: list[str] = Field(min_length=1, max_length=100, description="The cases whose reviewed cells to adapt on.")


class PromoteBody(BaseModel):
    run: str = Field(min_length=1, max_length=300, description="The run to serve (the adaptation's new run).")


@router.get("/me")
def me(request: Request) -> dict[str, Any]:
    """Who this request's token signs in as: name (null: the shared token, or no token), role and rights."""
    from cellmorphnet.serve.accounts import RIGHTS

    account = request.state.account
    return {**account.to_dict(), "rights": sorted(RIGHTS[account.role])}


@router.get("/served")
def served(desk: Desk) -> dict[str, Any]:
    """The served model and every switch, newest first."""
    return desk.history()


@router.post("/served/promote", dependencies=[Depends(require("promote"))])
def promote(request: Request, body: PromoteBody, desk: Desk) -> dict[str, Any]:
    """Serve this run from now (admins only; recorded)."""
    return desk.promote(body.run, account_name(request))


@router.post("/served/rollback", dependencies=[Depends(require("promote"))])
def rollback(request: Request, desk: Desk) -> dict[str, Any]:
    """Serve again the model served before the last switch (admins only; recorded)."""
    return desk.rollback(account_name(request))


@router.get("/adapt")
def adapt_status(desk: Desk) -> dict[str, Any]:
    """The latest adaptation job: its phase and progress, then the served and the new model side by side."""
    if desk.job is None:
        raise NotFound("No adaptation has been started on this server.")
    return desk.job.to_dict()


@router.post("/adapt", status_code=202, dependencies=[Depends(require("adapt"))])
def start_adapt(request: Request, body: AdaptBody, desk: Desk) -> dict[str, Any]:
    """Adapt the served model to the reviewed cells of these cases, in the background (one job at a time: 409
    while one runs). Poll GET /v1/adapt."""
    return desk.start_adapt(body.cases, account_name(request)).to_dict()

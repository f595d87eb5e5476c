"""The login that lets a browser in when the API has a token: a page, and a POST that
sets a cookie holding a digest of the token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from api.routes.pages import STATIC_DIR
from api.security import COOKIE, LOGIN_PATH, Doors, cookie_value

router = APIRouter(include_in_schema=False)


class Login(BaseModel):
    """The token, as typed into the login page."""

    token: Annotated[str, Field(min_length=1, max_length=1000)]


@router.get(LOGIN_PATH, response_class=FileResponse)
async def login_page() -> FileResponse:
    """The login form; its script posts the token and goes back where the user was."""
    return FileResponse(STATIC_DIR / "login.html", media_type="text/html")


@router.post(LOGIN_PATH, status_code=status.HTTP_204_NO_CONTENT)
async def login(body: Login, request: Request) -> Response:
    """Check the token and set the session cookie (HttpOnly, SameSite=Strict)."""
    doors: Doors = request.app.state.doors
    if doors.token is None:
        raise HTTPException(400, "This API has no token (PHOTOINDEX_API_TOKEN is unset).")
    if not doors.token_matches(body.token):
        raise HTTPException(401, "Wrong token.")
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.set_cookie(
        COOKIE,
        cookie_value(doors.token),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response

"""Signing in to the web page: ``GET /login`` (a form), ``POST /login``, ``GET /logout``.

A person signs in with a key's name and token (``--api-keys``) or an ``--auth`` user and
password; the server answers with a session cookie (HttpOnly, SameSite=Strict, Secure over
HTTPS) that the guard (``ragqa.api.guard``) accepts on every page request. Failed tries are
slowed per client and per user (``ragqa.api.access.LoginThrottle``: 429 with Retry-After) and
logged by name, never with the secret. The form is plain HTML: no script, nothing from elsewhere.
"""

from __future__ import annotations

import html
import urllib.parse
from typing import TYPE_CHECKING

from fastapi import Request  # a module-level name: FastAPI reads the routes' annotations from here
from fastapi.responses import Response

from ragqa.api.access import SESSION_COOKIE, Door, LoginRefused, client_address

if TYPE_CHECKING:
    from fastapi import FastAPI

MAX_FORM_BYTES = 16 * 1024

_FORM = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>ragqa: sign in 登录</title>
<style>
body {{ font-family: ui-sans-serif, system-ui, "Noto Sans CJK SC", sans-serif; background: #f6f7f9; margin: 0; }}
main {{ max-width: 22rem; margin: 12vh auto; background: #fff; padding: 2rem; border-radius: 10px;
        box-shadow: 0 1px 4px rgba(0,0,0,.12); }}
h1 {{ font-size: 1.3rem; margin-top: 0; }}
label {{ display: block; margin: .8rem 0 .3rem; }}
input {{ width: 100%; box-sizing: border-box; padding: .5rem; font-size: 1rem; }}
button {{ margin-top: 1.2rem; width: 100%; padding: .6rem; font-size: 1rem; }}
p.error {{ color: #b00020; }}
p.hint {{ color: #555; font-size: .85rem; }}
</style></head>
<body><main>
<h1>ragqa: sign in 登录</h1>
{message}
<form method="post" action="/login">
<input type="hidden" name="next" value="{next}">
<label for="username">{user_label}</label>
<input id="username" name="username" autocomplete="username" required value="{username}">
<label for="password">{secret_label}</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in 登录</button>
</form>
<p class="hint">{hint}</p>
</main></body></html>
"""


def add_login_routes(app: "FastAPI", door: Door) -> None:
    """The sign-in form and its POST, and sign-out, on ``app`` (a door that is open needs none)."""
    from fastapi.responses import HTMLResponse, RedirectResponse

    keys = door.mode == "keys"
    labels = (("Key name 密钥名称", "Key (token) 密钥", "Sign in with the name and token of your API key. "
               "用 API 密钥的名称和令牌登录。") if keys else
              ("User 用户名", "Password 密码", ""))

    def form(status: int, *, next_path: str = "/", username: str = "", message: str = "",
             headers: dict[str, str] | None = None) -> HTMLResponse:
        body = _FORM.format(message=f'<p class="error">{html.escape(message)}</p>' if message else "",
                            next=html.escape(next_path), username=html.escape(username),
                            user_label=labels[0], secret_label=labels[1], hint=html.escape(labels[2]))
        return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})})

    @app.get("/login", include_in_schema=False)
    async def login_form(request: Request, next: str = "/") -> Response:
        if door.session(request.cookies.get(SESSION_COOKIE, "")) is not None:
            return RedirectResponse(safe_next(next), status_code=303)
        return form(200, next_path=safe_next(next))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        raw = bytearray()
        async for part in request.stream():
            raw += part
            if len(raw) > MAX_FORM_BYTES:
                return form(413, message="the form is too large")
        fields = urllib.parse.parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=8)
        username = (fields.get("username") or [""])[0].strip()
        secret = (fields.get("password") or [""])[0]
        next_path = safe_next((fields.get("next") or ["/"])[0])
        try:
            _, token = door.sign_in(username, secret, client_address(request.scope))
        except LoginRefused as exc:
            return form(429, next_path=next_path, username=username,
                        message=f"Too many failed sign-ins: try again in {exc.retry_after} s. "
                                f"登录失败次数过多，请 {exc.retry_after} 秒后再试。",
                        headers={"Retry-After": str(exc.retry_after)})
        except PermissionError:
            return form(401, next_path=next_path, username=username,
                        message="Wrong name or key. 名称或密钥错误。" if keys else
                                "Wrong user name or password. 用户名或密码错误。")
        reply = RedirectResponse(next_path, status_code=303)
        reply.set_cookie(SESSION_COOKIE, token, max_age=int(door.session_seconds), httponly=True,
                         samesite="strict", secure=request.url.scheme == "https", path="/")
        return reply

    @app.get("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        door.sign_out(request.cookies.get(SESSION_COOKIE, ""))
        reply = RedirectResponse("/login", status_code=303)
        reply.delete_cookie(SESSION_COOKIE, path="/")
        return reply


def safe_next(target: str) -> str:
    """Where to go after signing in: a path on this server, never another site.

    >>> safe_next("/?kb=x"), safe_next("//evil.example/"), safe_next("https://evil.example/")
    ('/?kb=x', '/', '/')
    """
    if not target.startswith("/") or target.startswith("//") or "\\" in target or any(c < " " for c in target):
        return "/"
    return target

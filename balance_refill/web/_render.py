"""What every page shares: the signed-in actor, templates with the CSRF token bound to
the session, and the refusal pages."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from balance_refill import BalanceRefiller
from balance_refill.directory import Directory

from ._charts import number
from ._security import CSRF_FIELD, UsedForms, csrf_ok, csrf_secret, csrf_token, set_csrf_cookie

Authorize = Callable[[Request], "Awaitable[str | None] | str | None"]
"""The host's check: the signed-in actor's name, or None (the page answers 401)."""
Binding = Callable[[Request, "str | None"], str]
"""What a form's CSRF token is bound to (the session), given the request and the actor."""


def fmt_time(value: object) -> str:
    if not isinstance(value, datetime):
        return "—"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def signed(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return ("+" if value > 0 else "") + number(value)
    return "—" if value is None else str(value)


def shown_number(value: object) -> str:
    """A number for people, or a dash for anything that is not one."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return number(value)
    return "—"


def actor_binding(request: Request, actor: str | None) -> str:
    """The default binding in a host's app: the signed-in actor."""
    return actor or ""


class Base:
    """The refiller, the host's check, the directory and the templates."""

    def __init__(
        self,
        refiller: BalanceRefiller,
        authorize: Authorize,
        *,
        directory: Directory,
        forms: UsedForms,
        banner: str | None,
        login_url: str | None,
        logout_url: str | None,
        page_size: int,
        clock: Callable[[], datetime],
        binding: Binding,
    ) -> None:
        self.refiller = refiller
        self.admin = refiller.admin
        self.authorize = authorize
        self.directory = directory
        self.forms = forms
        self.banner = banner
        self.login_url = login_url
        self.logout_url = logout_url
        self.page_size = page_size
        self.clock = clock
        self.binding = binding
        self.env = Environment(
            loader=PackageLoader("balance_refill.web", "templates"),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(number=shown_number, signed=signed, when=fmt_time)

    async def actor(self, request: Request) -> str | None:
        result = self.authorize(request)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, str) and result.strip():
            return result.strip()
        return None

    async def signed_form(self, request: Request) -> tuple[str, FormData] | Response:
        """The signed-in actor and the form they posted, if its CSRF token is this
        session's; otherwise the page to answer with (401 signed out, 403 token)."""
        actor = await self.actor(request)
        if actor is None:
            return self.unauthorized(request)
        form = await request.form()
        if not csrf_ok(request, form.get(CSRF_FIELD), self.binding(request, actor)):
            return self.forbidden(request, actor)
        return actor, form

    def token(self, request: Request, actor: str | None) -> tuple[str, str, bool]:
        """(CSRF secret, the form token bound to this session, whether the secret is new)."""
        secret, new = csrf_secret(request)
        return secret, csrf_token(secret, self.binding(request, actor)), new

    def render(
        self,
        request: Request,
        template: str,
        status: int = 200,
        *,
        actor: str | None = None,
        headers: dict[str, str] | None = None,
        **context: Any,
    ) -> Response:
        secret, token, new = self.token(request, actor)
        base = str(request.scope.get("root_path", "")).rstrip("/")
        html = self.env.get_template(template).render(
            base=base,
            csrf=token,
            csrf_field=CSRF_FIELD,
            banner=self.banner,
            actor=actor,
            logout_url=self.logout_url,
            login_url=self.login_url,
            url=lambda path, **q: base + path + ("?" + urlencode(q) if q else ""),
            **context,
        )
        response = HTMLResponse(html, status_code=status, headers=headers)
        if new:
            set_csrf_cookie(response, request, secret)
        return response

    def unauthorized(self, request: Request) -> Response:
        return self.render(request, "error.html", 401, title="Sign-in required",
                           message="You are not signed in, or your session has ended.")  # fmt: skip

    def forbidden(self, request: Request, actor: str) -> Response:
        return self.render(
            request, "error.html", 403, actor=actor, title="Form expired",
            message="The form's security token did not match this session. Nothing was "
            "changed. Reload the page and submit the form again.",
        )  # fmt: skip

    def not_found(self, request: Request, actor: str, shown: object) -> Response:
        return self.render(request, "find.html", 404, actor=actor, missing=str(shown),
                           query=str(shown), errors={}, found=None)  # fmt: skip

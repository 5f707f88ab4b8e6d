"""The policy page with a policy store: the versions, the editor, the preview, and
applying or rolling back through the same review → confirm flow as the user forms.

One change is applied once. Every form carries `base`, the active version when it was
shown. A review or confirmation whose `base` is no longer active is refused (409):
"already applied" when the same intent was applied (the used-forms store has it), else
"changed since you reviewed". The intent key (the candidate policy, or the version to
activate, with `base`) is claimed in the used-forms store before the store is written,
so two confirmations racing on one review apply once.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from balance_refill.errors import BalanceRefillError, NoActivePolicy
from balance_refill.policy import AnyPolicy, as_tiered
from balance_refill.policy_store import PolicyStore

from ._actions import AdminPages
from ._forms import FieldErrors, parse_reason
from ._pages import HISTORY_CAP, SKIP_WORDS
from ._policy_form import (
    CALENDAR_UNITS,
    DEFAULT_DAYS,
    MAX_DAYS,
    MAX_RULES,
    MAX_TIERS,
    MODES,
    changes,
    decode_candidate,
    encode_candidate,
    form_values,
    parse_days,
    policy_from_form,
    policy_from_yaml,
    policy_yaml,
)
from ._policy_preview import Preview, preview
from ._security import new_form_id

ENABLE_EDITING = (
    "Editing needs a policy store. Store this policy as version 1 "
    "(balance-refill policy push FILE --reason '...', then balance-refill policy activate 1 "
    "--reason '...'), build the refiller on it (BalanceRefiller(balances, "
    "PolicyStore(db['balance_refill_policies']))) and pass policy_store= to admin_app; "
    "balance-refill serve does this by itself when started without --policy."
)


def intent_key(*parts: object) -> str:
    return "web-policy-" + hashlib.sha256(repr(parts).encode()).hexdigest()[:40]


class PolicyPages(AdminPages):
    """The admin pages, with the policy page's editing when a store is given
    (`policy_store`) and its preview replaying `transactions` (LibreChat's)."""

    def __init__(
        self,
        *args: Any,
        policy_store: PolicyStore | None = None,
        transactions: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.policy_store = policy_store
        self.transactions = transactions

    async def in_use(self) -> AnyPolicy:
        return await self.refiller.refresh_policy()

    async def current(self) -> tuple[int, AnyPolicy]:
        """The active stored version (0: none) and its policy (else the refiller's)."""
        in_use = await self.in_use()  # a refiller on the store reads it (once per refresh)
        if self.policy_store is not None:
            try:
                return await self.policy_store.active()
            except NoActivePolicy:
                pass
        return 0, in_use

    # -- GET /policy ------------------------------------------------------------------

    async def policy(self, request: Request) -> Response:
        actor = await self.actor(request)
        if actor is None:
            return self.unauthorized(request)
        return await self.policy_page(request, actor)

    async def policy_page(
        self,
        request: Request,
        actor: str,
        *,
        errors: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        status: int = 200,
    ) -> Response:
        base, shown = await self.current()
        tiers = as_tiered(shown)
        q = request.query_params
        sweep: Any = None
        sweep_error = None
        if q.get("preview") == "1":
            try:
                sweep = await self.refiller.sweep(dry_run=True, limit=HISTORY_CAP)
            except BalanceRefillError as exc:
                sweep_error = str(exc)
        versions = [] if self.policy_store is None else await self.policy_store.versions()
        notice = {k: q[k] for k in ("applied", "activated", "replayed") if q.get(k, "").isdigit()}
        return self.render(
            request,
            "policy.html",
            status,
            actor=actor,
            tiers={name: p.describe() for name, p in tiers.tiers.items()},
            default_tier=tiers.default_tier,
            rules=[rule.describe() for rule in tiers.rules],
            preview=sweep,
            preview_error=sweep_error,
            skip_words=SKIP_WORDS,
            preview_limit=HISTORY_CAP,
            editable=self.policy_store is not None,
            enable_editing=ENABLE_EDITING,
            versions=list(reversed(versions)),
            active_version=base,
            in_process=self.refiller.policy_version,
            notice=notice or None,
            errors=dict(errors or {}),
            form=dict(form or {}),
        )

    # -- the editor -------------------------------------------------------------------

    async def policy_edit(self, request: Request) -> Response:
        actor = await self.actor(request)
        if actor is None:
            return self.unauthorized(request)
        if self.policy_store is None:
            return self.render(request, "error.html", 404, actor=actor, title="Editing is off",
                               message=ENABLE_EDITING)  # fmt: skip
        base, active = await self.current()
        return self.editor(
            request,
            actor,
            base=base,
            active=active,
            form=form_values(active),
            yaml_text=policy_yaml(active),
        )

    def editor(
        self,
        request: Request,
        actor: str,
        *,
        base: int,
        active: AnyPolicy,
        form: Mapping[str, str],
        yaml_text: str,
        errors: Mapping[str, str] | None = None,
        shown: Preview | None = None,
        source: str = "form",
        status: int = 200,
    ) -> Response:
        def count(name: str, high: int) -> int:
            raw = form.get(name, "0")
            return min(int(raw), high) if raw.isdigit() and len(raw) < 6 else 0

        return self.render(
            request,
            "policy_edit.html",
            status,
            actor=actor,
            active_version=base,
            f=dict(form),
            e=dict(errors or {}),
            tier_count=count("tiers", MAX_TIERS),
            rule_count=count("rules", MAX_RULES + 1),
            tier_names=list(as_tiered(active).tiers)
            if form.get("kind") != "tiered"
            else [form.get(f"t{i}.name", "") for i in range(count("tiers", MAX_TIERS))],
            yaml_text=yaml_text,
            modes=MODES,
            units=CALENDAR_UNITS,
            days=form.get("days") or str(DEFAULT_DAYS),
            max_days=MAX_DAYS,
            shown=shown,
            source=source,
        )

    async def policy_change(self, request: Request) -> Response:
        """POST /policy/edit: `step` preview, review or confirm."""
        signed = await self.signed_form(request)
        if isinstance(signed, Response):
            return signed
        actor, raw = signed
        if self.policy_store is None:
            return self.render(request, "error.html", 404, actor=actor, title="Editing is off",
                               message=ENABLE_EDITING)  # fmt: skip
        fields = {k: v for k, v in raw.items() if isinstance(v, str)}
        step = fields.get("step", "")
        if step == "confirm":
            return await self.apply_candidate(request, actor, fields)
        base, active = await self.current()
        source = "yaml" if fields.get("source") == "yaml" else "form"
        form = (
            fields if source == "form" else form_values(active) | {"days": fields.get("days", "")}
        )
        yaml_text = fields.get("yaml", "") if source == "yaml" else policy_yaml(active)
        edit = functools.partial(
            self.editor, request, actor, base=base, active=active, form=form,
            yaml_text=yaml_text, source=source,
        )  # fmt: skip
        try:
            candidate = (
                policy_from_yaml(yaml_text)
                if source == "yaml"
                else policy_from_form(fields, active)
            )
        except FieldErrors as exc:
            if str(base) != fields.get("base"):
                return self.policy_stale(request, actor, None)
            return edit(errors=exc.errors, status=400)
        try:
            encoded = encode_candidate(candidate)  # what the store would refuse, refused now
        except BalanceRefillError as exc:
            return edit(errors={"yaml" if source == "yaml" else "form": str(exc)}, status=400)
        if str(base) != fields.get("base"):
            key = intent_key("apply", encoded, fields.get("base", ""))
            return self.policy_stale(request, actor, await self.forms.get(key))
        if step == "preview":
            return await self.run_preview(edit, fields.get("days"), candidate, active)
        try:
            reason = parse_reason(fields.get("reason"))
        except FieldErrors as exc:
            return edit(errors=exc.errors, status=400)
        diff = changes(active, candidate)
        if not diff:
            return edit(errors={"form": "This is the active policy: nothing to apply."}, status=400)
        return self.render(
            request, "policy_confirm.html", actor=actor, title="Apply a new policy version",
            summary="Push this policy as a new version and make it active",
            changes=diff, reason=reason, action="edit", form_id=new_form_id(),
            hidden={"candidate": encoded, "base": str(base), "reason": reason},
        )  # fmt: skip

    async def run_preview(
        self, edit: Callable[..., Response], raw_days: str | None, candidate: AnyPolicy,
        active: AnyPolicy,
    ) -> Response:  # fmt: skip
        """The editor again, with the replay of the last days below its title."""
        try:
            days = parse_days(raw_days)
        except FieldErrors as exc:
            return edit(errors=exc.errors, status=400)
        if self.transactions is None:
            return edit(errors={"days": "No transactions collection: nothing to replay."},
                        status=400)  # fmt: skip
        shown = await preview(self.transactions, candidate, active, days=days, now=self.clock())
        return edit(shown=shown)

    async def apply_candidate(
        self, request: Request, actor: str, fields: dict[str, str]
    ) -> Response:
        store = self.policy_store
        assert store is not None  # noqa: S101 - checked by the caller
        try:
            candidate = decode_candidate(fields.get("candidate"))
            reason = parse_reason(fields.get("reason"))
        except FieldErrors as exc:
            return await self.policy_page(request, actor, errors=exc.errors, status=400)
        text = encode_candidate(candidate)
        key = intent_key("apply", text, fields.get("base", ""))
        base, _ = await self.current()
        if str(base) != fields.get("base"):
            return self.policy_stale(request, actor, await self.forms.get(key))
        info: dict[str, object] = {
            "action": "policy-apply",
            "actor": actor,
            "reason": reason,
            "values": {"base": base},
        }
        prior = await self.forms.claim(key, info)
        if prior is not None:
            return self.policy_done("applied", prior.get("version"), replayed=True)
        try:
            version = await store.push(candidate, actor=actor, reason=reason)
            await store.activate(version, actor=actor, reason=reason)
        except BalanceRefillError as exc:
            await self.forms.release(key)
            return await self.policy_page(request, actor, status=400,
                                          errors={"form": f"The change was refused: {exc}"})  # fmt: skip
        await self.forms.finish(key, {"version": version})
        return self.policy_done("applied", version)

    # -- rolling back -------------------------------------------------------------------

    async def policy_activate(self, request: Request) -> Response:
        """POST /policy/activate: make an older (or any other) version active again."""
        signed = await self.signed_form(request)
        if isinstance(signed, Response):
            return signed
        actor, raw = signed
        store = self.policy_store
        if store is None:
            return self.render(request, "error.html", 404, actor=actor, title="Editing is off",
                               message=ENABLE_EDITING)  # fmt: skip
        fields = {k: v for k, v in raw.items() if isinstance(v, str)}
        wanted = fields.get("version", "")
        errors: dict[str, str] = {}
        try:
            reason = parse_reason(fields.get("reason"))
        except FieldErrors as exc:
            errors.update(exc.errors)
            reason = ""
        target = None
        if wanted.isdigit() and len(wanted) <= 10:
            try:
                target = await store.get(int(wanted))
            except BalanceRefillError:
                target = None
        if target is None:
            errors["version"] = "That version does not exist."
        key = intent_key("activate", wanted, fields.get("base", ""))
        base, active = await self.current()
        if str(base) != fields.get("base"):
            return self.policy_stale(request, actor, await self.forms.get(key))
        if errors or target is None:
            return await self.policy_page(request, actor, errors=errors, form=fields, status=400)
        if target.version == base:
            return await self.policy_page(request, actor, form=fields, status=400,
                                          errors={"version": f"Version {base} is already active."})  # fmt: skip
        if fields.get("step") != "confirm":
            return self.render(
                request, "policy_confirm.html", actor=actor,
                title=f"Activate version {target.version}",
                summary=f"Make version {target.version} active again (now: version {base})",
                changes=changes(active, target.policy), reason=reason, action="activate",
                form_id=new_form_id(),
                hidden={"version": str(target.version), "base": str(base), "reason": reason},
            )  # fmt: skip
        info: dict[str, object] = {"action": "policy-activate", "actor": actor, "reason": reason,
                "values": {"version": target.version, "base": base}}  # fmt: skip
        prior = await self.forms.claim(key, info)
        if prior is not None:
            return self.policy_done("activated", target.version, replayed=True)
        try:
            await store.activate(target.version, actor=actor, reason=reason)
        except BalanceRefillError as exc:
            await self.forms.release(key)
            return await self.policy_page(request, actor, status=400,
                                          errors={"form": f"The change was refused: {exc}"})  # fmt: skip
        await self.forms.finish(key, {"version": target.version})
        return self.policy_done("activated", target.version)

    # -- answers --------------------------------------------------------------------------

    def policy_stale(
        self, request: Request, actor: str, prior: Mapping[str, Any] | None
    ) -> Response:
        """409: the form was shown before the active version last changed."""
        return self.render(request, "policy_stale.html", 409, actor=actor, prior=prior)

    @staticmethod
    def policy_done(what: str, version: object, *, replayed: bool = False) -> Response:
        query = {what: str(version or "")}
        if replayed:
            query["replayed"] = "1"
        # Relative: `policy` from `policy/edit` keeps the host's mount prefix.
        return RedirectResponse("../policy?" + urlencode(query) + "#versions", status_code=303)

"""The admin page on rows LibreChat's own code wrote (`reserveBalance`, `spendTokens`,
`createTransaction` in Node, tests/interop/librechat/bridge.mjs) beside the library's.
Wire backend only, like the rest of the interop suite."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from bson import ObjectId
from starlette.requests import Request

from balance_refill import BalanceRefiller, RefillPolicy
from balance_refill.web import admin_app
from tests.interop.conftest import ON_SERVER, SKIP_REASON, LibreChat

if not ON_SERVER:
    pytest.skip(SKIP_REASON, allow_module_level=True)


def authorize(request: Request) -> str | None:
    return "ops"


async def test_a_user_page_renders_rows_librechat_wrote(
    librechat: LibreChat, make_library: Callable[..., BalanceRefiller], db: Any
) -> None:
    """LibreChat's prompt and completion spends and its autoRefill row render as such,
    next to the library's grant; the user is found by email; the chart ends at the
    balance LibreChat left."""
    refiller = make_library(RefillPolicy(amount=10_000, interval="30d", start_balance=20_000))
    (made,) = await librechat.run(
        {"op": "createUser", "email": "ada@example.com", "balance": {"startBalance": 20_000}}
    )
    ada = made["user"]
    assert isinstance(ada, ObjectId)
    await librechat.run(
        {"op": "reserveAndSpend", "user": ada, "promptTokens": 1001, "prompt": 0.15,
         "completionTokens": 301, "completion": 2.5, "model": "gpt-4o"},
        {"op": "createTransaction", "user": ada, "tokenType": "credits", "context": "autoRefill",
         "rawAmount": 500},
        {"op": "reserveAndSpend", "user": ada, "promptTokens": 40, "prompt": 1.0,
         "completionTokens": 7, "completion": 3.0, "model": "gpt-4o"},
    )  # fmt: skip
    await refiller.admin.grant(ada, 250, actor="ops", reason="welcome")
    app = admin_app(refiller, authorize=authorize, balances=db["balances"], users=db["users"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://testserver"
    ) as client:
        found = await client.get("/users", params={"q": "ada@example"})
        assert found.status_code == 303
        page = await client.get("/users", params={"id": str(ada)})
    assert page.status_code == 200, page.text[-2000:]
    text = page.text
    assert text.count("prompt spend") == 2
    assert text.count("completion spend") == 2
    assert "gpt-4o" in text
    assert "autoRefill" in text
    assert "welcome" in text
    balance = (await refiller.get_state(ada)).balance
    shown = re.search(r'id="balance">([^<]+)<', text)
    assert shown
    chart = text.split("Balance over time", 1)[1].split("</svg>", 1)[0]
    assert re.findall(r": ([\d,.]+)</title></circle>", chart)[-1] == shown.group(1)
    assert balance > 0

"""`balance_refill.web._metrics`: the Prometheus route behind a bearer token, fed by a
refiller's metrics (what `balance-refill serve` mounts)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from balance_refill import BalanceRefiller
from balance_refill.web._metrics import PrometheusEndpoint, bearer_token

TOKEN = "s3cret-token-of-enough-length"  # noqa: S105 - a test token


@pytest.fixture
async def endpoint() -> AsyncIterator[PrometheusEndpoint]:
    endpoint = PrometheusEndpoint()
    yield endpoint
    endpoint.shutdown()


@pytest.fixture
async def http(endpoint: PrometheusEndpoint) -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(routes=[endpoint.route(authorize=bearer_token(TOKEN))])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
        yield client


async def test_metrics_need_the_token(http: httpx.AsyncClient) -> None:
    """No token, a wrong one, or the token without `Bearer`: 401 and no metrics."""
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = await http.get("/metrics", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert "balance_refill" not in response.text


async def test_metrics_with_the_token_show_the_refillers_counts(
    http: httpx.AsyncClient,
    endpoint: PrometheusEndpoint,
    make_refiller: Callable[..., BalanceRefiller],
) -> None:
    """With the token, the spends the refiller made are counted in Prometheus' format."""
    refiller = make_refiller(metrics=endpoint.metrics)
    await refiller.spend("u", 10)
    await refiller.spend("u", 10)
    response = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    values = {
        s.name: s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert values["balance_refill_spends_total"] == 2

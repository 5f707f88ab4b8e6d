"""`/metrics` for Prometheus, behind a bearer token: a Starlette route factory.

    endpoint = PrometheusEndpoint()                     # the SDK and its Prometheus reader
    refiller = BalanceRefiller(..., metrics=endpoint.metrics)
    routes.append(endpoint.route(authorize=bearer_token(token)))

Prometheus scrapes with `authorization: {type: Bearer, credentials: <token>}`. This module
needs `opentelemetry-sdk` and `opentelemetry-exporter-prometheus`; nothing else in `web`
imports it, so the admin page runs without them.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from balance_refill.metrics import Metrics

Authorize = Callable[[Request], bool]


def bearer_token(token: str) -> Authorize:
    """A check that the request carries `Authorization: Bearer <token>` (compared in
    constant time)."""
    expected = f"Bearer {token}".encode()

    def authorize(request: Request) -> bool:
        given = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(given, expected)

    return authorize


class PrometheusEndpoint:
    """The library's metrics recorded by the OpenTelemetry SDK into a registry of their
    own, and the route that serves that registry in Prometheus' text format."""

    def __init__(self) -> None:
        self.registry: CollectorRegistry = CollectorRegistry()
        self.provider: MeterProvider = MeterProvider(
            metric_readers=[PrometheusMetricReader(registry=self.registry)]
        )
        self.metrics = Metrics(self.provider)
        """Pass to `BalanceRefiller(metrics=...)`."""

    def route(self, *, authorize: Authorize, path: str = "/metrics") -> Route:
        """GET `path`: the metrics if `authorize(request)`, else 401."""
        return metrics_route(self.registry, authorize=authorize, path=path)

    def shutdown(self) -> None:
        """Stop the provider (and unregister its reader)."""
        self.provider.shutdown()


def metrics_route(
    registry: CollectorRegistry, *, authorize: Authorize, path: str = "/metrics"
) -> Route:
    """A Starlette route serving `registry` to requests `authorize` accepts."""

    async def metrics(request: Request) -> Response:
        if not authorize(request):
            return PlainTextResponse(
                "unauthorized\n", status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        return Response(
            generate_latest(registry),
            media_type=CONTENT_TYPE_LATEST,
            headers={"Cache-Control": "no-store"},
        )

    return Route(path, metrics, methods=["GET"])


__all__ = ["Authorize", "PrometheusEndpoint", "bearer_token", "metrics_route"]

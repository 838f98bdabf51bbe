"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from chatmem.api.deps import Parts, Service

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(service: Service) -> dict[str, Any]:
    """Liveness, with the Redis status (the seeds' /health shape plus chatmem's)."""
    redis_ok, total_users = await service.health()
    return {
        "status": "healthy" if redis_ok else "degraded",
        "redis": "connected" if redis_ok else "disconnected",
        "provider": service.provider.info.name,
        "total_users": total_users,
        "timestamp": datetime.now().isoformat(),
    }


@router.get("/ready")
async def ready(service: Service) -> JSONResponse:
    """Ready when Redis answers and the outbox is empty: while turns are degraded, or
    their messages not yet replayed into Redis, a load balancer should prefer another
    process (the provider is checked by its own seam)."""
    redis_ok, outbox = await service.readiness()
    ok = redis_ok and outbox == 0
    body = {"ready": ok, "redis": redis_ok, "outbox": outbox}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(parts: Parts) -> Response:
    return Response(parts.metrics.render(), media_type="text/plain; version=0.0.4")

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
    """Ready when Redis answers and the outbox holds nothing still to store in Redis:
    while turns are degraded, or their messages not yet replayed, a load balancer should
    prefer another process (the provider is checked by its own seam). `unconfirmed`:
    turns stored on the Redis master that no replica has confirmed yet (a replica
    outage, with a write concern); every process would say the same, so they do not
    make it unready."""
    state = await service.readiness()
    ok = bool(state["redis"]) and state["outbox"] == 0
    return JSONResponse({"ready": ok, **state}, status_code=200 if ok else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(parts: Parts) -> Response:
    return Response(parts.metrics.render(), media_type="text/plain; version=0.0.4")

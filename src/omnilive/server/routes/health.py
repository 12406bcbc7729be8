"""GET /health (200 once the engine is loaded: uvicorn serves only after the lifespan starts it)
and GET /metrics (Prometheus text format). Both stay open when an api_key is set."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict:
    return {"status": "ok", "model": request.app.state.engine.card.id}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(await request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

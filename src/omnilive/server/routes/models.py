"""GET /v1/models and /v1/models/{id}: the one model this server runs, with its parts listed."""

from __future__ import annotations

from fastapi import APIRouter, Request

from omnilive.types import ModelCard
from omnilive.server.errors import model_not_found
from omnilive.server.responses import ModelObject

router = APIRouter()


def served_names(request: Request) -> set[str]:
    """The card's id, and whatever the operator passed as --model (e.g. "default")."""
    return {request.app.state.engine.card.id, request.app.state.settings.model}


def check_model(request: Request, model: str, aliases: frozenset[str] = frozenset()) -> ModelCard:
    """The served card if `model` names it (or one of `aliases`), else 404 model_not_found."""
    if model not in served_names(request) | aliases:
        raise model_not_found(model)
    return request.app.state.engine.card


def model_object(card: ModelCard, created: int) -> ModelObject:
    return ModelObject(
        id=card.id,
        created=created,
        owned_by=card.owned_by,
        parts=list(card.parts),
        context_length=card.context_length,
        voices=list(card.voices),
        default_voice=card.default_voice,
        input_modalities=list(card.input_modalities),
        output_modalities=list(card.output_modalities),
    )


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    card = request.app.state.engine.card
    return {"object": "list", "data": [model_object(card, request.app.state.created).model_dump()]}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: str) -> ModelObject:
    return model_object(check_model(request, model_id), request.app.state.created)

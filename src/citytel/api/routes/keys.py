"""API keys over HTTP (admin scope): create, list, revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from citytel.api.auth import KeyChecker, require
from citytel.api.deps import PoolDep
from citytel.api.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic
from citytel.keys import ApiKey, Scope, generate_key, hash_key
from citytel.storage import api_keys

router = APIRouter(prefix="/v1/keys", tags=["keys"], dependencies=[require(Scope.ADMIN)])

KeyName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


def key_public(key: ApiKey) -> ApiKeyPublic:
    """The public shape of a key: never the key itself."""
    return ApiKeyPublic(
        name=key.name,
        scopes=sorted(key.scopes),
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
    )


@router.post("", response_model=ApiKeyCreated, status_code=201, responses={409: {}})
async def create_key(pool: PoolDep, body: ApiKeyCreate) -> ApiKeyCreated:
    """Create a key; the answer is the only time the key itself is shown."""
    key = generate_key()
    stored = await api_keys.create_key(pool, body.name, frozenset(body.scopes), hash_key(key))
    return ApiKeyCreated(**key_public(stored).model_dump(), key=key)


@router.get("", response_model=list[ApiKeyPublic])
async def list_keys(pool: PoolDep) -> list[ApiKeyPublic]:
    """Every key, revoked ones included, without the keys themselves."""
    return [key_public(k) for k in await api_keys.list_keys(pool)]


@router.post("/{name}/revoke", response_model=ApiKeyPublic, responses={404: {}})
async def revoke_key(request: Request, pool: PoolDep, name: KeyName) -> ApiKeyPublic:
    """Revoke a key: it stops working at once."""
    revoked = await api_keys.revoke_key(pool, name)
    checker: KeyChecker = request.app.state.key_checker
    checker.forget()
    return key_public(revoked)

"""HTTP routes: each decodes its input, calls one core function and returns a response model."""

from fastapi import APIRouter

from semid.service.api.routes import encode_assign, explorer, generation, lookups, ops, stats

router = APIRouter()
for module in (encode_assign, lookups, ops, stats, generation, explorer):
    router.include_router(module.router)

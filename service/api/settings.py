"""Service settings: environment variables (SEMID_*) or CLI flags, read once and injected."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from semid.service.index.snapshot import MAX_PAGE_LIMIT


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEMID_", extra="ignore")

    index_dir: str = Field(default="index", description="Index directory, or s3://bucket/prefix, to serve.")
    checkpoint_dir: Path | None = Field(default=None, description="Checkpoint (default: the index's own copy).")
    api_key: str | None = Field(default=None, description="Required in X-API-Key on write routes when set.")
    max_batch: int = Field(default=8192, ge=1, le=1_000_000, description="Most embeddings or items per request.")
    max_body_bytes: int | None = Field(
        default=None, ge=1024, description="Largest request body accepted (default: the largest legal batch as JSON)."
    )
    max_page: int = Field(default=1000, ge=1, le=MAX_PAGE_LIMIT, description="Largest page size of prefix look-ups.")
    max_k: int = Field(default=100, ge=1, le=10_000, description="Largest k of nearest-ID resolution.")
    write_lock_timeout: float = Field(default=30.0, ge=0, description="Seconds a write waits for the index lock.")
    threads: int = Field(default=0, ge=0, le=1024, description="torch threads for encoding (0: torch's default).")
    header_timeout: float = Field(default=10.0, gt=0, le=3600, description="Seconds to receive a request's headers.")
    body_idle_timeout: float = Field(default=30.0, gt=0, le=3600, description="Most seconds between body chunks.")
    body_timeout: float = Field(default=120.0, gt=0, le=86400, description="Most seconds to receive a whole body.")
    max_header_bytes: int = Field(
        default=65536, ge=1024, le=16 << 20, description="Largest request line + headers (431 and closed beyond)."
    )
    send_timeout: float = Field(
        default=30.0, gt=0, le=86400, description="Most seconds to write a response out; a slower reader is cut off."
    )
    max_connections: int = Field(
        default=1024, ge=1, le=1_000_000, description="Most open connections (503 and closed beyond)."
    )
    max_connections_per_client: int = Field(
        default=128, ge=1, le=1_000_000, description="Most open connections from one client address."
    )
    write_rate_limit: int = Field(
        default=1000, ge=0, description="Most write requests per API key or client address per window (0: off)."
    )
    read_rate_limit: int = Field(
        default=0, ge=0, description="Most /v1/resolve and /v1/trie requests per client per window (0: off)."
    )
    rate_limit_window: float = Field(default=10.0, gt=0, le=86400, description="Seconds of a rate limit window.")
    report_dir: Path | None = Field(
        default=None, description="A `semid evaluate` output (report.html, metrics.json), linked from /ui if it fits."
    )
    workers: int = Field(
        default=1, ge=1, le=64, description="Server processes sharing the port, each with its own index snapshot."
    )
    read_only: bool = Field(
        default=False, description="A read replica: write routes answer 403; reads follow the writer's manifest."
    )
    fast_reads: bool = Field(
        default=True,
        description="Answer plain prefix, item and ID look-ups without FastAPI's routing (service/api/fast_reads.py); "
        "false: every request takes the routes (same answers, slower).",
    )
    store_poll_seconds: float = Field(
        default=1.0, gt=0, le=3600, description="Index on object storage: seconds between polls of its manifest."
    )
    store_stale_seconds: float = Field(
        default=30.0, gt=0, description="Index on object storage: /readyz answers 503 when unreachable this long."
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    @field_validator("index_dir", mode="before")
    @classmethod
    def _index_as_text(cls, value: object) -> object:
        """A Path as given (an object-store URI stays a string: ``Path`` would fold its ``//``)."""
        return os.fspath(value) if isinstance(value, os.PathLike) else value

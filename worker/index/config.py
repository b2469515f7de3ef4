"""The index group of the worker's settings (``TWINFLAG_INDEX__*``): which backend, where, how it is built.

Read once by ``worker.service.settings.WorkerSettings``; ``worker.service.wiring`` builds the backend.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_serializer,
    field_validator,
    model_validator,
)

from worker.core.retention import Retention, days_ms

DEFAULT_OPTIMIZE_EVERY = 10_000
"""New points between two background optimisations of the embedded index (``EdgeIndex``'s default too)."""
QUANTILE = 0.99
"""Scalar quantisation maps this central share of the values onto int8 (Qdrant's own default too)."""
OVERSAMPLING = 2.0
"""With quantisation on, the best ``OVERSAMPLING`` x k by int8 score are rescored with the float32 vectors."""


class IndexSettings(BaseModel):
    """The worker's memory: Qdrant Edge on local disk, or a Qdrant server."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    backend: Literal["embedded", "qdrant"] = Field(
        default="embedded",
        description="`embedded` (Qdrant Edge on disk) or `qdrant` (a server); `qdrant` if `url` set.",
    )
    path: Path = Field(default=Path("data/index"), description="Directory of the embedded index.")
    url: str | None = Field(
        default=None,
        repr=False,
        description="Qdrant server URL, e.g. `https://qdrant:6333`; credentials in it are never shown.",
    )
    api_key: SecretStr | None = Field(default=None, description="Qdrant API key (secret, never logged).")
    https: bool | None = Field(
        default=None, description="Force TLS to the Qdrant server; unset: from the URL scheme."
    )
    collection: str = Field(default="twinflag", description="Qdrant collection name.")
    timeout_s: float = Field(default=10.0, gt=0, description="Timeout of one request to the Qdrant server.")
    hnsw_m: int = Field(default=16, ge=4, description="HNSW graph degree of a new collection.")
    hnsw_ef_construct: int = Field(
        default=100, ge=4, description="HNSW build-time beam width of a new collection."
    )
    hnsw_ef: int = Field(default=128, ge=1, description="HNSW search-time beam width.")
    quantization: Literal["none", "scalar"] = Field(
        default="scalar",
        description="`scalar`: the graph walk compares int8 copies of the vectors (kept in RAM), then"
        " rescores the best with the float32 ones: 2-4x the queries/s at 100k points, same recall.",
    )
    shard_number: int | None = Field(
        default=None,
        ge=1,
        description="Qdrant server: shards of a new collection (unset: the server's default).",
    )
    replication_factor: int | None = Field(
        default=None, ge=1, description="Qdrant server: copies of each shard of a new collection."
    )
    write_consistency_factor: int | None = Field(
        default=None, ge=1, description="Qdrant server: replicas that must confirm a write (new collection)."
    )
    optimize_every: int = Field(
        default=DEFAULT_OPTIMIZE_EVERY,
        ge=1,
        description="Embedded index: run the segment optimiser after this many new points.",
    )

    retention_days: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Days of record time a post can be matched for: a post matches only posts at most"
        " this much older than itself, and older points are removed in the background. Unset: forever.",
    )
    tenant_retention_days: dict[str, float] = Field(
        default_factory=dict,
        description='Retention per tenant, in days, as JSON (`{"chat": 7}`); other tenants get'
        " `retention_days`.",
    )

    @field_validator("tenant_retention_days")
    @classmethod
    def _positive_days(cls, days: dict[str, float]) -> dict[str, float]:
        wrong = sorted(tenant for tenant, value in days.items() if not 0 < value < math.inf)
        if wrong:
            raise ValueError(f"retention days must be finite and > 0 (tenants {', '.join(wrong)})")
        return days

    def retention(self) -> Retention:
        """The retention the batch step and the expiry work with, in milliseconds of record time."""
        return Retention(
            None if self.retention_days is None else days_ms(self.retention_days),
            {tenant: days_ms(days) for tenant, days in self.tenant_retention_days.items()},
        )

    @model_validator(mode="before")
    @classmethod
    def _backend_from_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("url") and "backend" not in data:
            return {**data, "backend": "qdrant"}
        return data

    @field_serializer("url")
    def _mask_credentials(self, url: str | None) -> str | None:
        return None if url is None else mask_credentials(url)

    @model_validator(mode="after")
    def _check_url(self) -> Self:
        if self.backend == "qdrant" and not self.url:
            raise ValueError("index backend qdrant needs a url")
        return self


def mask_credentials(url: str) -> str:
    """``http://user:pass@host`` → ``http://**********@host``: a URL with credentials, shown safely."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"**********@{host}"))

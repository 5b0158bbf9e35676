"""What the HTTP service holds while it runs: the encoder and the index, built once at start-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from semid.service.api.settings import ServiceSettings
from semid.service.encoder import CheckpointEncoder
from semid.service.errors import CorruptIndexError
from semid.service.index.handle import SemanticIdIndex
from semid.service.placement import check_compatible

log = logging.getLogger(__name__)


@dataclass
class ServiceState:
    settings: ServiceSettings
    index: SemanticIdIndex
    encoder: CheckpointEncoder

    @classmethod
    def load(cls, settings: ServiceSettings) -> ServiceState:
        """Open the index and its checkpoint; refuses a checkpoint whose fingerprint or ID layout differs."""
        if settings.threads:
            torch.set_num_threads(settings.threads)
        index = SemanticIdIndex.open(
            settings.index_dir, lock_timeout=settings.write_lock_timeout, read_only=settings.read_only
        )
        index.follow_store(settings.store_poll_seconds)  # an index on object storage: poll its manifest
        checkpoint = settings.checkpoint_dir or index.checkpoint_dir
        if checkpoint is None or not Path(checkpoint).is_dir():
            raise CorruptIndexError(
                f"index {settings.index_dir} has no checkpoint copy; pass the checkpoint (SEMID_CHECKPOINT_DIR)"
            )
        encoder = CheckpointEncoder.from_dir(checkpoint)
        check_compatible(index, encoder)
        if settings.api_key is None:
            log.warning("SEMID_API_KEY is not set: write routes are open to every client")
        log.info("serving %s: %d items, fingerprint %s", settings.index_dir, len(index), index.fingerprint)
        return cls(settings=settings, index=index, encoder=encoder)

"""A node: settings, store, the shared ASR engine and the live calls, started in order."""

from __future__ import annotations

import logging
import socket
import uuid

from service.asr.engine import AsrEngine
from service.asr.segmenter import SegmenterConfig
from service.asr.vad import make_vad
from service.calls.registry import Registry
from service.config import Settings
from service.store.db import Store

log = logging.getLogger(__name__)


class Node:
    def __init__(self, settings: Settings, load_model: bool = True) -> None:
        self.settings = settings
        self.node_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.store = Store(settings.database_url)
        self.engine: AsrEngine | None = (
            AsrEngine(settings.model, settings.model_dir, settings.device, settings.asr_max_batch)
            if load_model
            else None
        )
        self.registry = Registry(self)
        self.segmenter_config = SegmenterConfig(
            vad=settings.vad,
            aggressiveness=settings.vad_aggressiveness,
            end_silence_ms=settings.utterance_end_silence_ms,
            max_utterance_s=settings.max_utterance_s,
        )

    def start(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.media_dir.mkdir(parents=True, exist_ok=True)
        self.store.upgrade()
        stale = self.store.mark_unfinished_calls("interrupted", "node_restarted")
        if stale:
            log.warning("marked %d call(s) left open by a previous run as interrupted", stale)
        # A missing VAD model should stop the node now, not fail the first call.
        make_vad(settings.vad, settings.vad_aggressiveness)
        if self.engine is not None:
            self.engine.load()

    def close(self) -> None:
        self.registry.shutdown()
        if self.engine is not None:
            self.engine.close()
        self.store.engine.dispose()

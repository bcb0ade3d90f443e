"""A node: settings, store, the shared ASR engine and the live calls, built, wired and
started in order. The node only builds and wires: the calls get what they use in one
CallContext (service/calls/context.py), never the node itself."""

from __future__ import annotations

import logging
import socket
import uuid

from service.asr.engine import AsrEngine
from service.asr.segmenter import SegmenterConfig
from service.asr.vad import make_vad
from service.calls.context import CallContext
from service.calls.peer import NODE_SEGMENT_BURST, NODE_SEGMENTS_PER_S
from service.calls.registry import Registry
from service.config import Settings
from service.ratelimit import TokenBucket
from service.store.db import Store
from service.store.offhub import OffHub
from service.vocab import CallState

log = logging.getLogger(__name__)


class Node:
    def __init__(self, settings: Settings, load_model: bool = True) -> None:
        self.settings = settings
        self.node_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self._store_threads = OffHub(Store(settings.database_url))
        self.store = self._store_threads.store
        self.engine: AsrEngine | None = (
            AsrEngine(
                settings.model,
                settings.model_dir,
                settings.device,
                settings.asr_max_batch,
                compute_type=settings.compute_type,
                download_base=settings.model_download_base,
            )
            if load_model
            else None
        )
        self.segmenter_config = SegmenterConfig(
            vad=settings.vad,
            aggressiveness=settings.vad_aggressiveness,
            end_silence_ms=settings.utterance_end_silence_ms,
            max_utterance_s=settings.max_utterance_s,
        )
        self.registry = Registry(
            CallContext(
                settings=settings,
                store=self.store,
                engine=self.engine,
                segmenter=self.segmenter_config,
                node_id=self.node_id,
                # Segments peers send, across every call of the node (calls/peer.py).
                remote_segments=TokenBucket(NODE_SEGMENTS_PER_S, NODE_SEGMENT_BURST),
                on_end=lambda session: None,  # the registry puts its own in
            )
        )

    def start(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.media_dir.mkdir(parents=True, exist_ok=True)
        self.store.upgrade()
        stale = self.store.mark_unfinished_calls(CallState.INTERRUPTED, "node_restarted")
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
        self._store_threads.close()
        self.store.engine.dispose()

"""A node: settings, store, the shared ASR engine and the live calls, built, wired and
started in order. The node only builds and wires: the calls get what they use in one
CallContext (service/calls/context.py), never the node itself."""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime

import gevent

from service.asr.engine import AsrEngine
from service.asr.longform import LongFormTranscriber
from service.asr.segmenter import SegmenterConfig
from service.calls.context import CallContext
from service.calls.peer import NODE_SEGMENT_BURST, NODE_SEGMENTS_PER_S
from service.calls.postcall import PostCall
from service.calls.registry import Registry
from service.config import Settings, node_id_from_host
from service.metrics import NodeMetrics
from service.ratelimit import TokenBucket
from service.recordings.retention import keep_sweeping
from service.store.db import Store
from service.store.offhub import OffHub
from service.vocab import CallState
from service.webhooks.worker import Deliverer

log = logging.getLogger(__name__)


class Node:
    def __init__(self, settings: Settings, load_model: bool = True) -> None:
        self.settings = settings
        # Stable across restarts (IM_NODE_ID): it names this node's calls in a database
        # that a fleet shares, and which open calls a restart closes.
        self.node_id = settings.node_id or node_id_from_host()
        # Queries run on OS threads: a commit's disk flush must not stall the hub.
        self._store_threads = OffHub(Store(settings.database_url, node_id=self.node_id))
        self.store = self._store_threads.proxy
        self._retention: gevent.Greenlet | None = None  # IM_RECORDING_RETENTION_DAYS
        self.metrics = NodeMetrics()  # this node's own registry (GET /metrics)
        endpoints = settings.webhook_endpoints
        self.webhooks: Deliverer | None = (
            Deliverer(
                OffHub(self.store.outbox, self._store_threads.pool).proxy,
                endpoints,
                settings.webhook_max_pending,
                settings.webhook_retry_max_s,
            )
            if endpoints
            else None
        )
        self.engine: AsrEngine | None = (
            AsrEngine(
                settings.model,
                settings.model_dir,
                settings.device,
                settings.asr_max_batch,
                compute_type=settings.compute_type,
                download_base=settings.model_download_base,
                admit_wait_s=settings.asr_admit_wait_s,
                admit_busy=settings.asr_admit_busy,
                short_context=settings.asr_short_context,
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
        live = self.engine
        # The post-call pass (calls/postcall.py): its own model, loaded at its first pass,
        # and it gives way whenever the live engine has anything queued or decoding.
        self.postcall = PostCall(
            settings,
            self.store,
            LongFormTranscriber(
                settings.final_model or settings.model,
                settings.model_dir,
                settings.device,
                settings.compute_type,
                settings.model_download_base,
                busy=lambda: live is not None and live.pending > 0,
                make_vad=self.segmenter_config.make_vad,
            ),
            automatic=settings.postcall,
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
                after_call=self.postcall.call_ended,
                pass_follows=self.postcall.pass_follows,
            )
        )

    def start(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.media_dir.mkdir(parents=True, exist_ok=True)
        settings.recordings_dir.mkdir(parents=True, exist_ok=True)
        self.store.upgrade()
        if self.webhooks is not None:  # before anything writes an event (just below)
            self.webhooks.start()
        # Only this node's (IM_NODE_ID): the other nodes of a shared database keep theirs.
        stale = self.store.mark_unfinished_calls(CallState.INTERRUPTED, "node_restarted")
        if stale:
            log.warning(
                "marked %d call(s) left open by a previous run of node %s as interrupted",
                stale,
                self.node_id,
            )
        # A missing VAD model should stop the node now, not fail the first call.
        self.segmenter_config.make_vad()
        if self.engine is not None:
            self.engine.load()
            # The pass's model too, when passes run by themselves: before the API serves
            # (a load holds the GIL in bursts), and after the live one, whose memory its
            # check must see as taken. A LongFormError stops the start, as the live one's.
            if settings.postcall:
                self.postcall.transcriber.prepare()
        if settings.recording_retention_days > 0:
            self._retention = gevent.spawn(
                keep_sweeping,
                settings.recordings_dir,
                settings.recording_retention_days,
                lambda: [s.id for s in self.registry.live()],
                self._recording_expired,
            )
        # After the calls a kill left open are closed: they get their passes now.
        self.postcall.start()

    def _recording_expired(self, call_id: str) -> None:
        with contextlib.suppress(KeyError):  # a folder whose call row is gone
            self.store.update_call(call_id, recording_deleted_at=datetime.now(UTC))

    def close(self) -> None:
        if self._retention is not None:
            self._retention.kill(block=False)
        self.registry.shutdown()
        self.postcall.close()  # a pass cut short here is resumed at the next start
        if self.engine is not None:
            self.engine.close()
        if self.webhooks is not None:  # what is undelivered waits in the outbox
            self.webhooks.close()
        self._store_threads.close()
        self.store.engine.dispose()

"""What a call uses of its node, handed to it whole: no locator to reach back through.

The node builds one ``CallContext`` and gives it to every call it creates; a call reports
its end through ``on_end`` (the registry forgets it there). Nothing in ``calls/`` imports
the node, so the layers point one way: the node wires, the calls use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.asr.engine import AsrEngine
    from service.asr.segmenter import SegmenterConfig
    from service.config import Settings
    from service.ratelimit import TokenBucket
    from service.store.db import Store


@dataclass(frozen=True)
class CallContext:
    settings: Settings
    store: Store
    engine: AsrEngine | None  # None: a node without a model (tests), which transcribes nothing
    segmenter: SegmenterConfig
    node_id: str
    remote_segments: TokenBucket  # what peers may store, across all calls (calls/peer.py)
    on_end: Callable[[Any], None]  # called with the CallSession once it has ended
    # Then this, with the same session: the post-call pass queues it (calls/postcall.py).
    after_call: Callable[[Any], None] = lambda session: None
    # Whether that pass will cover the whole call (it recorded all of it): asked as the
    # hang-up drain ends, to leave what is still untranscribed to the pass.
    pass_follows: Callable[[Any], bool] = lambda session: False

"""The live calls of this node: creating them (with every check that can fail early)
and finding them again."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import gevent
from gevent import socket as gsocket
from sqlalchemy.exc import SQLAlchemyError
from whisper.tokenizer import LANGUAGES

from service.audio.specs import open_sink, open_source
from service.calls.peer import NODE_SEGMENT_BURST, NODE_SEGMENTS_PER_S
from service.calls.session import CallOptions, CallSession, new_token
from service.ratelimit import TokenBucket
from service.transport.link import format_address, parse_address

if TYPE_CHECKING:
    from service.node import Node

log = logging.getLogger(__name__)


class CallError(Exception):
    """A call cannot be made as asked. `status` is the HTTP status that fits."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Registry:
    def __init__(self, node: Node) -> None:
        self.node = node
        self._live: dict[str, CallSession] = {}
        # Calls being created right now: a dial resolves its peer (which yields), so two
        # requests could otherwise both pass the limit check and both be admitted.
        self._admitting = 0
        self.refused_too_many = 0
        # Segments peers send, across every call of the node (see calls/peer.py).
        self.remote_segments = TokenBucket(NODE_SEGMENTS_PER_S, NODE_SEGMENT_BURST)

    @contextmanager
    def _slot(self) -> Iterator[None]:
        """Hold one of the node's ``max_calls`` places while a call is created.

        Every call costs a socket, two greenlets, an audio source and sink and a share of
        the one ASR worker, so past the limit a new call would degrade the ones already
        up; it is refused before anything is opened or stored."""
        most = self.node.settings.max_calls
        if len(self._live) + self._admitting >= most:
            self.refused_too_many += 1
            log.warning("refused a new call: %d calls is this node's limit", most)
            raise CallError(
                503,
                "too_many_calls",
                f"this node already has {most} calls (IM_MAX_CALLS); end one or retry later",
            )
        self._admitting += 1
        try:
            yield
        finally:
            self._admitting -= 1

    def get(self, call_id: str) -> CallSession | None:
        return self._live.get(call_id)

    def live(self) -> list[CallSession]:
        return list(self._live.values())

    def forget(self, session: CallSession) -> None:
        self._live.pop(session.id, None)

    def _session(self, mode: str, options: CallOptions, token: str) -> CallSession:
        from service.audio.specs import AudioSpecError

        engine = self.node.engine
        if options.language is not None and options.language not in LANGUAGES:
            raise CallError(
                422,
                "unsupported_language",
                f"unknown language {options.language!r}: use an ISO 639-1 code Whisper knows",
            )
        if (
            options.transcribe
            and options.language not in (None, "en")
            and engine is not None
            and not engine.multilingual
        ):
            raise CallError(
                422,
                "unsupported_language",
                f"model {self.node.settings.model} is English-only; "
                f"language {options.language!r} needs a multilingual model (IM_MODEL=base)",
            )
        if options.task == "translate" and engine is not None and not engine.multilingual:
            raise CallError(
                422,
                "unsupported_task",
                f"model {self.node.settings.model} is English-only and cannot translate; "
                "use a multilingual model (IM_MODEL=base)",
            )
        try:
            media = self.node.settings.media_dir
            source = open_source(options.input, media_dir=media)
            sink = open_sink(options.output, media_dir=media)
        except AudioSpecError as exc:
            raise CallError(422, "unusable_device", str(exc)) from None
        return CallSession(self.node, uuid.uuid4().hex, mode, options, source, sink, token)

    def listen(self, port: int | None, options: CallOptions) -> CallSession:
        with self._slot():
            return self._listen(port, options)

    def dial(self, peer: str, token: str, options: CallOptions) -> CallSession:
        with self._slot():
            return self._dial(peer, token, options)

    def _listen(self, port: int | None, options: CallOptions) -> CallSession:
        settings = self.node.settings
        port = settings.call_port if port is None else port
        session = self._session("listen", options, new_token())
        family = gsocket.AF_INET6 if ":" in settings.call_host else gsocket.AF_INET
        listener = gsocket.socket(family, gsocket.SOCK_STREAM)
        listener.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_REUSEADDR, 1)
        try:
            listener.bind((settings.call_host, port))
            listener.listen(8)
        except OSError as exc:
            listener.close()
            session.source.close()
            session.sink.close()
            raise CallError(
                422,
                "unusable_address",
                f"cannot listen on {format_address(settings.call_host, port)}: {exc.strerror}",
            ) from None
        bound = listener.getsockname()[1]
        address = format_address(settings.advertise_host, bound)
        try:
            self._record(session, local_address=address)
        except CallError:
            listener.close()
            raise
        session.listen(listener, address)
        return session

    def _dial(self, peer: str, token: str, options: CallOptions) -> CallSession:
        try:
            host, port = parse_address(peer)
        except ValueError as exc:
            raise CallError(422, "unusable_address", str(exc)) from None
        try:
            gsocket.getaddrinfo(host, port, type=gsocket.SOCK_STREAM)
        except OSError as exc:
            raise CallError(
                422, "unusable_address", f"cannot resolve peer host {host!r}: {exc}"
            ) from None
        session = self._session("dial", options, token)
        self._record(session, peer_address=format_address(host, port))
        session.dial(host, port, format_address(host, port))
        return session

    def _record(self, session: CallSession, **fields: str) -> None:
        o = session.options
        try:
            self._add_call(session, o, fields)
        except SQLAlchemyError as exc:
            session.source.close()
            session.sink.close()
            raise CallError(
                503,
                "storage_unavailable",
                f"cannot store the call: {self.node.store.write_error or exc}",
            ) from None
        self._live[session.id] = session
        log.info("call %s created (%s)", session.id, session.mode)

    def _add_call(self, session: CallSession, o: CallOptions, fields: dict[str, str]) -> None:
        self.node.store.add_call(
            id=session.id,
            mode=session.mode,
            state=session.state,
            input=str(o.input),
            output=None if o.output is None else str(o.output),
            language=o.language,
            transcribe=o.transcribe,
            task=o.task,
            frames_sent=0,
            frames_received=0,
            bytes_sent=0,
            bytes_received=0,
            **fields,
        )

    def shutdown(self) -> None:
        """End every call at once: each waits up to its drain timeout for its last
        utterances, and one after another that would be the sum of all of them."""
        gevent.joinall([gevent.spawn(session.end, "shutdown") for session in self.live()])

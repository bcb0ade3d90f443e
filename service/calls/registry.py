"""The live calls of this node: creating them (with every check that can fail early)
and finding them again."""

from __future__ import annotations

import logging
import ssl
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import gevent
from gevent import socket as gsocket
from sqlalchemy.exc import SQLAlchemyError

from service.asr.engine import AsrRequestError, check_language
from service.audio.specs import AudioSpecError, open_sink, open_source
from service.calls.context import CallContext
from service.calls.options import CallOptions, new_token
from service.calls.session import CallSession
from service.calls.totals import CallTotals
from service.transport.addresses import format_address, parse_address
from service.transport.listener import Listener
from service.transport.tls import server_context
from service.vocab import Mode

log = logging.getLogger(__name__)


class CallError(Exception):
    """A call cannot be made as asked. `status` is the HTTP status that fits."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Registry:
    def __init__(self, ctx: CallContext) -> None:
        # Calls report their end to the registry, which forgets them.
        self.ctx = replace(ctx, on_end=self.forget)
        self._live: dict[str, CallSession] = {}
        # Calls being created right now: a dial resolves its peer (which yields), so two
        # requests could otherwise both pass the limit check and both be admitted.
        self._admitting = 0
        self.refused_too_many = 0
        self.totals = CallTotals()  # every ended call's counters (GET /metrics)
        self.refused_saturated = 0  # transcribing calls refused for want of ASR headroom
        self._tls: ssl.SSLContext | None = None  # made once, for every listening call

    @contextmanager
    def _slot(self) -> Iterator[None]:
        """Hold one of the node's ``max_calls`` places while a call is created.

        Every call costs a socket, two greenlets, an audio source and sink and a share of
        the one ASR worker, so past the limit a new call would degrade the ones already
        up; it is refused before anything is opened or stored."""
        most = self.ctx.settings.max_calls
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
        # Folded in the same step: a scrape never sees a call in neither place.
        if self._live.pop(session.id, None) is not None:
            self.totals.fold(session)

    def _admit(self, options: CallOptions) -> None:
        """Refuse live captions the ASR worker has no headroom for (asr/headroom.py): the
        calls already running keep their latency, and the caller may come back later or
        ask for the post-call pass alone."""
        if options.transcribe_after and not options.record:
            raise CallError(
                422,
                "needs_recording",
                '"transcribe": "after" transcribes the recording: it needs "record": true',
            )
        engine = self.ctx.engine
        if not options.transcribe or engine is None:
            return
        verdict = engine.headroom()
        if verdict.saturated:
            self.refused_saturated += 1
            raise CallError(
                503,
                "asr_saturated",
                f"no ASR headroom for live captions: {verdict.reason}; try again later, "
                'or ask for "transcribe": "after" (captions from the recording, after the call)',
            )

    def _session(self, mode: Mode, options: CallOptions, token: str) -> CallSession:
        engine = self.ctx.engine
        try:
            if engine is not None:
                engine.check(options.language, options.task, transcribe=options.transcribe)
            else:
                check_language(options.language)
        except AsrRequestError as exc:
            raise CallError(422, exc.code, exc.message) from None
        self._admit(options)
        try:
            media = self.ctx.settings.media_dir
            source = open_source(options.input, media_dir=media)
            sink = open_sink(options.output, media_dir=media)
        except AudioSpecError as exc:
            raise CallError(422, "unusable_device", str(exc)) from None
        return CallSession(self.ctx, uuid.uuid4().hex, mode, options, source, sink, token)

    def listen(self, port: int | None, options: CallOptions) -> CallSession:
        with self._slot():
            return self._listen(port, options)

    def dial(self, peer: str, token: str, options: CallOptions) -> CallSession:
        with self._slot():
            return self._dial(peer, token, options)

    def _listener_tls(self) -> ssl.SSLContext | None:
        settings = self.ctx.settings
        if self._tls is None and settings.tls_cert is not None and settings.tls_key is not None:
            self._tls = server_context(str(settings.tls_cert), str(settings.tls_key))
        return self._tls

    def _listen(self, port: int | None, options: CallOptions) -> CallSession:
        settings = self.ctx.settings
        port = settings.call_port if port is None else port
        session = self._session(Mode.LISTEN, options, new_token())
        try:
            listener = Listener(
                settings.call_host,
                port,
                hello_timeout_s=settings.hello_timeout_s,
                tls=self._listener_tls(),
                **session.listener_callbacks(),
            )
        except OSError as exc:
            session.source.close()
            session.sink.close()
            raise CallError(
                422,
                "unusable_address",
                f"cannot listen on {format_address(settings.call_host, port)}: {exc.strerror}",
            ) from None
        address = format_address(settings.advertise_host, listener.port)
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
        session = self._session(Mode.DIAL, options, token)
        self._record(session, peer_address=format_address(host, port))
        session.dial(host, port, format_address(host, port))
        return session

    def _record(self, session: CallSession, **fields: str) -> None:
        o = session.options
        try:
            self.ctx.store.add_call(
                id=session.id,
                mode=session.mode,
                state=session.state,
                input=str(o.input),
                output=None if o.output is None else str(o.output),
                language=o.language,
                transcribe=o.transcribe,
                transcribe_after=o.transcribe_after,
                task=o.task,
                record=o.record,
                frames_sent=0,
                frames_received=0,
                bytes_sent=0,
                bytes_received=0,
                **fields,
            )
        except SQLAlchemyError as exc:
            session.source.close()
            session.sink.close()
            raise CallError(
                503,
                "storage_unavailable",
                f"cannot store the call: {self.ctx.store.write_error or exc}",
            ) from None
        self._live[session.id] = session
        log.info("call %s created (%s)", session.id, session.mode)

    def shutdown(self) -> None:
        """End every call at once: each waits up to its drain timeout for its last
        utterances, and one after another that would be the sum of all of them."""
        gevent.joinall([gevent.spawn(session.end, "shutdown") for session in self.live()])

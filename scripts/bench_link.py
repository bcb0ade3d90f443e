"""Call-audio latency benchmark (not a test): two real nodes, N concurrent calls.

Each call carries timestamped synthetic audio both ways (a paced tone source stamps every
20 ms frame with its capture time). The receiving playout buffer records, for every frame it
hands to the output, `now - capture time`: the one-way latency the call adds (encode, TCP,
jitter buffer, playout clock). Both nodes run on this host, so their clocks agree.

Printed per run (codec x number of calls): one-way latency p50/p95/p99/max (per call; the
worst call is shown), playout target and depth, frames sent/received/lost and dropped or
concealed by playout, wire rate per direction, and CPU per call (both nodes' CPU time during
the run minus their idle CPU, divided by the calls, in % of one core).

`--netns` puts node B in its own network namespace, joined to this one by a veth pair, so
calls cross two network stacks. `--rig` instead measures mouth-to-ear through real PyAudio
streams on the PulseAudio rig: clicks played into A's microphone, found in B's speaker.

    scripts/bench_link                               # PCM16 and Opus, 1 and 20 calls, 30 s
    scripts/bench_link --calls 20 --seconds 120      # the 2-minute soak of the issue
    scripts/bench_link --rig                         # mouth-to-ear on the PulseAudio rig
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.localnodes import NodeProcess, start_call  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


class Netns:
    """Node B's own network namespace, linked to ours by a veth pair (10.77.0.1 <-> .2)."""

    NAME = "im-bench"

    def __init__(self) -> None:
        self.here, self.there = "10.77.0.1", "10.77.0.2"

    def __enter__(self) -> Netns:
        def ip(*args: str) -> None:
            subprocess.run(["ip", *args], check=True, capture_output=True)

        subprocess.run(["ip", "netns", "del", self.NAME], capture_output=True)
        ip("netns", "add", self.NAME)
        ip("link", "add", "im-veth0", "type", "veth", "peer", "name", "im-veth1")
        ip("link", "set", "im-veth1", "netns", self.NAME)
        ip("addr", "add", f"{self.here}/24", "dev", "im-veth0")
        ip("link", "set", "im-veth0", "up")
        ip("-n", self.NAME, "addr", "add", f"{self.there}/24", "dev", "im-veth1")
        ip("-n", self.NAME, "link", "set", "im-veth1", "up")
        ip("-n", self.NAME, "link", "set", "lo", "up")
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "link", "del", "im-veth0"], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.NAME], capture_output=True)


def start_nodes(
    codec: str, calls: int, work: Path, netns: Netns | None
) -> tuple[NodeProcess, NodeProcess]:
    env = {
        "IM_CODECS": codec,
        "IM_MAX_CALLS": str(max(32, calls)),
        "IM_LOG_LEVEL": "WARNING",
    }
    a = NodeProcess("A", work / "a", env=env, model_dir=ROOT / "data" / "models")
    b = NodeProcess("B", work / "b", env=env, model_dir=ROOT / "data" / "models")
    if netns is not None:
        for node, host in ((a, netns.here), (b, netns.there)):
            node.env.update(IM_API_HOST=host, IM_CALL_HOST=host, IM_ADVERTISE_HOST=host)
            node.url = f"http://{host}:{node.port}"
        b.command_prefix = ["ip", "netns", "exec", Netns.NAME]
    a.start()
    b.start()
    return a, b


def run(codec: str, calls: int, seconds: float, netns: Netns | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-link-") as tmp:
        a, b = start_nodes(codec, calls, Path(tmp), netns)
        try:
            idle_from = time.monotonic()
            idle_cpu = [cpu_seconds(n.proc.pid) for n in (a, b)]
            time.sleep(3)
            idle_rate = sum(
                cpu_seconds(n.proc.pid) - c for n, c in zip((a, b), idle_cpu, strict=True)
            ) / (time.monotonic() - idle_from)
            pairs = []
            for i in range(calls):
                spec = {"output": "null", "transcribe": False}
                pairs.append(
                    start_call(
                        a,
                        b,
                        listen={"input": f"tone:{300 + 10 * i}", **spec},
                        dial={"input": f"tone:{700 + 10 * i}", **spec},
                    )
                )
            cpu0 = [cpu_seconds(n.proc.pid) for n in (a, b)]
            t0 = time.monotonic()
            time.sleep(seconds)
            busy = sum(cpu_seconds(n.proc.pid) - c for n, c in zip((a, b), cpu0, strict=True))
            elapsed = time.monotonic() - t0
            live = [
                (a.call("GET", f"/sessions/{ca['id']}"), b.call("GET", f"/sessions/{cb['id']}"))
                for ca, cb in pairs
            ]
            # Half the calls are hung up from each side: frames in flight towards the side
            # that hangs up are legitimately never read, so loss is counted in the other
            # direction, where the bye follows the last frame on the same stream.
            for i, (ca, cb) in enumerate(pairs):
                if i % 2:
                    a.call("DELETE", f"/sessions/{ca['id']}")
                else:
                    b.call("DELETE", f"/sessions/{cb['id']}")
            ended = [
                (a.call("GET", f"/sessions/{ca['id']}"), b.call("GET", f"/sessions/{cb['id']}"))
                for ca, cb in pairs
            ]
        finally:
            a.stop()
            b.stop()
    return summarise(codec, calls, elapsed, busy, idle_rate, live, ended)


def summarise(codec, calls, elapsed, busy, idle_rate, live, ended) -> dict:
    latency = {"p50": [], "p95": [], "p99": [], "max": []}
    lost = dropped = concealed = 0
    kbps = []
    targets, depths, states = [], [], []
    for i, ((la, lb), (ea, eb)) in enumerate(zip(live, ended, strict=True)):
        for snap in (la, lb):
            q = snap["stats"]["quality"]
            for k in latency:
                latency[k].append(q["one_way_latency_ms"].get(k, float("nan")))
            dropped += q["frames_dropped"]
            concealed += q["frames_concealed"]
            kbps.append(q["send_kbps"])
            targets.append(q["playout_delay_ms"])
            depths.append(q["playout_depth_ms"])
        # What the side that hung up sent and the other did not receive was lost.
        sa, sb = ea["stats"], eb["stats"]
        if i % 2:
            lost += sa["frames_sent"] - sb["frames_received"]
            expected = ("ended", "hangup", "ended", "peer_hangup")
        else:
            lost += sb["frames_sent"] - sa["frames_received"]
            expected = ("ended", "peer_hangup", "ended", "hangup")
        state = (ea["state"], ea["end_reason"], eb["state"], eb["end_reason"])
        if state != expected:
            states.append(state)
    bad = states
    return {
        "codec": codec,
        "calls": calls,
        "seconds": round(elapsed, 1),
        "latency": {k: (float(np.median(v)), float(np.max(v))) for k, v in latency.items()},
        "target_ms": float(np.median(targets)),
        "depth_ms": (float(np.median(depths)), float(np.max(depths))),
        "lost": lost,
        "dropped": dropped,
        "concealed": concealed,
        "kbps": (float(np.median(kbps)), float(np.max(kbps))),
        "cpu_per_call_pct": 100 * (busy / elapsed - idle_rate) / calls,
        "cpu_total_pct": 100 * busy / elapsed,
        "bad_endings": bad,
    }


def print_run(r: dict) -> None:
    lat = r["latency"]
    print(
        f"{r['codec']:>6} x{r['calls']:<3} {r['seconds']:>6.1f} s | one-way latency ms "
        f"p50 {lat['p50'][0]:5.1f} p95 {lat['p95'][0]:5.1f} (worst call {lat['p95'][1]:5.1f}) "
        f"p99 {lat['p99'][0]:5.1f} (worst {lat['p99'][1]:5.1f}) max {lat['max'][1]:6.1f}"
    )
    print(
        f"{'':>11} | playout target {r['target_ms']:.1f} ms, depth median "
        f"{r['depth_ms'][0]:.0f} ms max {r['depth_ms'][1]:.0f} ms | frames lost {r['lost']}, "
        f"dropped by playout {r['dropped']}, concealed {r['concealed']}"
    )
    print(
        f"{'':>11} | wire {r['kbps'][0]:.1f} kbit/s per direction (max {r['kbps'][1]:.1f}) | "
        f"CPU {r['cpu_per_call_pct']:.2f} % of a core per call ({r['cpu_total_pct']:.1f} % "
        f"both nodes){' | BAD ENDINGS: ' + str(r['bad_endings']) if r['bad_endings'] else ''}"
    )


# -- mouth to ear on the PulseAudio rig ------------------------------------------------------

RIG_RATE = 48_000
CHUNK = 240  # 5 ms: the timing resolution of the two recordings


def _record(pa, name: str, seconds: float, out: list, ready: threading.Event) -> None:
    """Blocking reads from one input device, each chunk stamped when it returned."""
    import pyaudio

    index = next(
        i for i in range(pa.get_device_count()) if pa.get_device_info_by_index(i)["name"] == name
    )
    stream = pa.open(
        format=pyaudio.paInt16,
        channels=1,
        rate=RIG_RATE,
        input=True,
        input_device_index=index,
        frames_per_buffer=CHUNK,
    )
    stream.read(CHUNK, exception_on_overflow=False)
    ready.set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        data = stream.read(CHUNK, exception_on_overflow=False)
        out.append((time.monotonic(), np.frombuffer(data, dtype=np.int16)))
    stream.close()


def _onsets(chunks: list, threshold: float = 3000.0, gap_s: float = 0.25) -> list[float]:
    """Times (monotonic) at which a burst starts: first loud sample after a quiet gap."""
    found, last = [], -1e9
    for stamp, pcm in chunks:
        loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > threshold)
        if loud.size:
            t = stamp - (pcm.size - loud[0]) / RIG_RATE  # the chunk ended at `stamp`
            if t - last > gap_s:
                found.append(t)
            last = stamp
    return found


def mouth_to_ear(codec: str, clicks: int) -> None:
    rig_dir = Path(tempfile.mkdtemp(prefix="bench-rig-"))
    out = subprocess.run(
        [str(ROOT / "scripts" / "audio-rig"), "start", str(rig_dir)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            os.environ[key] = value.strip("'\"")
    import pyaudio

    work = Path(tempfile.mkdtemp(prefix="bench-link-"))
    a, b = start_nodes(codec, 1, work, None)
    pa = pyaudio.PyAudio()
    try:
        start_call(
            a,
            b,
            listen={"input": "rig_mic_a", "output": "null", "transcribe": False},
            dial={"input": "silence", "output": "rig_spk_b", "transcribe": False},
        )
        time.sleep(1.0)
        period = 0.5
        seconds = clicks * period + 1.5
        mouth: list = []
        ear: list = []
        readies = [threading.Event(), threading.Event()]
        threads = [
            threading.Thread(target=_record, args=(pa, "rig_mic_a", seconds, mouth, readies[0])),
            threading.Thread(target=_record, args=(pa, "rig_spk_b_out", seconds, ear, readies[1])),
        ]
        for t in threads:
            t.start()
        for r in readies:
            r.wait(10)
        # Clicks: 10 ms bursts of 1 kHz every `period`, played into A's microphone sink.
        burst = (0.5 * 32767 * np.sin(2 * np.pi * 1000 * np.arange(480) / RIG_RATE)).astype(
            np.int16
        )
        signal = np.zeros(int(RIG_RATE * (clicks * period + 0.5)), dtype=np.int16)
        for i in range(clicks):
            at = int(RIG_RATE * (0.25 + i * period))
            signal[at : at + burst.size] = burst
        player = pa.open(
            format=pyaudio.paInt16,
            channels=1,
            rate=RIG_RATE,
            output=True,
            output_device_index=next(
                i
                for i in range(pa.get_device_count())
                if pa.get_device_info_by_index(i)["name"] == "rig_mic_a_in"
            ),
            frames_per_buffer=CHUNK,
        )
        player.write(signal.tobytes())
        player.close()
        for t in threads:
            t.join()
        said, heard = _onsets(mouth), _onsets(ear)
        delays = []
        for t in said:
            later = [h - t for h in heard if 0 <= h - t < 0.4]
            if later:
                delays.append(1000 * later[0])
        if not delays:
            print(f"mouth-to-ear ({codec}): no click found in B's speaker", file=sys.stderr)
            return
        d = np.asarray(delays)
        print(
            f"mouth-to-ear {codec:>6}: {len(d)}/{len(said)} clicks found | delay ms p50 "
            f"{np.percentile(d, 50):.1f} p95 {np.percentile(d, 95):.1f} min {d.min():.1f} "
            f"max {d.max():.1f} (A's capture stream + call + B's playout stream; ±5 ms)"
        )
    finally:
        pa.terminate()
        a.stop()
        b.stop()
        subprocess.run(
            [str(ROOT / "scripts" / "audio-rig"), "stop", str(rig_dir)], capture_output=True
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codecs", nargs="+", default=["pcm16", "opus"])
    parser.add_argument("--calls", nargs="+", type=int, default=[1, 20])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each run")
    parser.add_argument("--netns", action="store_true", help="node B in its own netns")
    parser.add_argument("--rig", action="store_true", help="mouth-to-ear on the audio rig")
    parser.add_argument("--clicks", type=int, default=20, help="clicks for --rig")
    args = parser.parse_args()
    print(f"host: {os.cpu_count()} CPUs, {os.uname().release}; python {sys.version.split()[0]}")
    if args.rig:
        for codec in args.codecs:
            mouth_to_ear(codec, args.clicks)
        return
    failures = 0
    for calls in args.calls:
        for codec in args.codecs:
            with Netns() if args.netns else contextlib.nullcontext() as netns:
                r = run(codec, calls, args.seconds, netns)
            print_run(r)
            failures += bool(r["bad_endings"]) or r["lost"] > 0
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

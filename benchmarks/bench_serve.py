"""Load test of `lenet serve`: N predictions from C concurrent keep-alive clients on loopback.

    python benchmarks/bench_serve.py                      # starts `lenet serve` itself, 5,000 x 16
    python benchmarks/bench_serve.py -n 20000 -c 32 --body pixels
    python benchmarks/bench_serve.py --url http://127.0.0.1:8000   # an already running server

Each request is what the page sends: a 280x280 PNG drawing of an MNIST test digit (or, with
--body pixels, the JSON 28x28 form). Reports requests/s, latency percentiles and errors (a non-200
answer, a wrong label or a broken connection). The client is plain asyncio on raw sockets so it costs
the server's CPUs as little as possible; on a small machine the two still share the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np


def digit_bodies(kind: str, count: int = 32) -> list[tuple[bytes, bytes, int]]:
    """(content type, body, true label) for a few MNIST test digits, drawn as the page draws them."""
    from PIL import Image

    from lenet.data import load_split

    split = load_split("mnist", device="cpu")
    out = []
    for i in range(count):
        x, label = split.test_x[i].reshape(28, 28).numpy(), int(split.test_y[i])
        if kind == "pixels":
            out.append((b"application/json", json.dumps({"pixels": x.round(3).tolist()}).encode(), label))
            continue
        ink = Image.fromarray((x * 255).astype(np.uint8)).resize((200, 200), Image.Resampling.BILINEAR)
        page = Image.new("L", (280, 280), 0)
        page.paste(ink, (40, 40))
        buffer = io.BytesIO()
        page.save(buffer, format="PNG")
        out.append((b"image/png", buffer.getvalue(), label))
    return out


async def client(host: str, port: int, bodies: list, todo: list[int], latencies: list[float],
                 errors: list[str], misread: list[int]) -> None:  # fmt: skip
    reader, writer = await asyncio.open_connection(host, port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while todo:
        i = todo.pop()
        ctype, body, label = bodies[i % len(bodies)]
        request = (b"POST /api/predict HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
                   % (host.encode(), ctype, len(body))) + body  # fmt: skip
        start = time.perf_counter()
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                          if line.startswith(b"content-length:"))  # fmt: skip
            answer = await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration) as e:
            errors.append(f"{type(e).__name__}: {e}")
            writer.close()
            reader, writer = await asyncio.open_connection(host, port)
            continue
        latencies.append(time.perf_counter() - start)
        if status != 200:
            errors.append(f"HTTP {status}: {answer[:200]!r}")
        elif json.loads(answer)["label"] != label:
            misread.append(i)
    writer.close()


async def load(host: str, port: int, bodies: list, n: int, concurrency: int) -> dict:
    todo = list(range(n))[::-1]
    latencies: list[float] = []
    errors: list[str] = []
    misread: list[int] = []
    start = time.perf_counter()
    clients = [client(host, port, bodies, todo, latencies, errors, misread) for _ in range(concurrency)]
    await asyncio.gather(*clients)
    seconds = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    p50, p90, p99 = (round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99))
    return {"requests": n, "concurrency": concurrency, "seconds": round(seconds, 3),
            "requests_per_s": round(n / seconds, 1), "p50_ms": p50, "p90_ms": p90, "p99_ms": p99,
            "max_ms": round(float(ms.max()), 2), "errors": len(errors), "first_errors": errors[:3],
            "misread_of_n": [len(misread), n]}  # fmt: skip


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) used so far by a process and its children (worker processes).

    Unlike wall time, this does not grow when other programs share the machine's cores.
    """
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        children = {int(c) for t in tids for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()}
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(c) or 0.0 for c in children)


def start_server(model: Path | None, workers: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "lenet.cli", "serve", "--port", str(port), "--workers", str(workers)]
    command += ["--model", str(model)] if model else []
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1).read()
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"lenet serve exited with status {proc.returncode}") from None
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("lenet serve did not start within 60 s")


def measure(args: argparse.Namespace) -> dict:
    bodies = digit_bodies(args.body)
    proc, url = (None, args.url) if args.url else start_server(args.model, args.workers)
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        asyncio.run(load(host, port, bodies, args.warmup, args.concurrency))  # every worker warmed up
        load_before = os.getloadavg()[0]
        cpu_before = cpu_seconds(proc.pid) if proc else None
        result = asyncio.run(load(host, port, bodies, args.requests, args.concurrency))
        if cpu_before is not None:
            result["server_cpu_ms_per_request"] = round(
                (cpu_seconds(proc.pid) - cpu_before) / args.requests * 1e3, 3
            )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
    loads = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs"
    workers = None if args.url else args.workers
    result |= {"body": args.body, "workers": workers, "machine": machine}
    return result | {"loadavg_1min_before_after": loads}


def report(r: dict) -> str:
    server = f", {r['workers']} server process{'es' * (r['workers'] > 1)}" if r["workers"] else ""
    before, after = r["loadavg_1min_before_after"]
    lines = [
        f"{r['requests']} requests ({r['body']}), {r['concurrency']} clients{server}, {r['machine']}, "
        f"1-minute load average {before} before, {after} after",
        f"  {r['requests_per_s']} requests/s over {r['seconds']} s",
        f"  latency p50 {r['p50_ms']} ms  p90 {r['p90_ms']} ms  p99 {r['p99_ms']} ms  max {r['max_ms']} ms",
    ]
    if "server_cpu_ms_per_request" in r:
        lines.append(f"  server CPU time {r['server_cpu_ms_per_request']} ms per request")
    lines.append(f"  errors {r['errors']}  misread {r['misread_of_n'][0]}/{r['requests']}"
                 + (f"  first errors: {r['first_errors']}" if r["errors"] else ""))  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", "--requests", type=int, default=5000, help="requests to send (default: 5000)")
    ap.add_argument("-c", "--concurrency", type=int, default=16, help="concurrent clients (default: 16)")
    ap.add_argument("--body", choices=("png", "pixels"), default="png", help="what each request sends")
    ap.add_argument("--warmup", type=int, default=200, help="requests sent first and not measured")
    ap.add_argument("--url", help="an already running server (default: start `lenet serve` on a free port)")
    ap.add_argument("--model", type=Path, help="model for the started server (default: the shipped one)")
    ap.add_argument("--workers", type=int, default=1, help="processes of the started server (default: 1)")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = ap.parse_args()
    result = measure(args)
    print(json.dumps(result) if args.json else report(result))


if __name__ == "__main__":
    main()

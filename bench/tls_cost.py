"""What TLS costs an enqueue: one redis-server with a plain and a TLS port (certificate from
a throwaway trustme CA), the same App workload on each.

    python bench/tls_cost.py [--n 5000]

Prints JSON: enqueues per second, one at a time (each awaited) and concurrent (the fast
connection pipelines them), for redis:// and rediss://.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import trustme

from segue import App


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _rates(url: str, n: int) -> dict[str, float]:
    app = App("tls-bench", redis_url=url, queue="tlsbench")

    @app.task(name="tls.noop")
    async def noop(i: int) -> int:
        return i

    async with app:
        started = time.perf_counter()
        for i in range(n):
            await noop.enqueue(i)
        one = n / (time.perf_counter() - started)
        started = time.perf_counter()
        await asyncio.gather(*(noop.enqueue(i) for i in range(n)))
        many = n / (time.perf_counter() - started)
    return {"one_at_a_time_per_s": round(one), "concurrent_per_s": round(many)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    ns = parser.parse_args()
    binary = shutil.which("redis-server")
    assert binary, "needs redis-server built with TLS (Debian's is)"
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        (d / "ca.pem").write_bytes(ca.cert_pem.bytes())
        (d / "server.pem").write_bytes(cert.cert_chain_pems[0].bytes())
        (d / "server.key").write_bytes(cert.private_key_pem.bytes())
        plain, tls = _free_port(), _free_port()
        args = ["--port", str(plain), "--tls-port", str(tls), "--save", "", "--dir", tmp]
        args += ["--tls-cert-file", str(d / "server.pem"), "--tls-key-file", str(d / "server.key")]
        args += ["--tls-ca-cert-file", str(d / "ca.pem"), "--tls-auth-clients", "no"]
        proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    redis.Redis(port=plain).ping()
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, "redis-server did not start"
                    time.sleep(0.05)
            out: dict[str, Any] = {"n": ns.n}
            out["plain"] = asyncio.run(_rates(f"redis://127.0.0.1:{plain}/0", ns.n))
            url = f"rediss://127.0.0.1:{tls}/0?ssl_ca_certs={d / 'ca.pem'}"
            out["tls"] = asyncio.run(_rates(url, ns.n))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""TLS options of a `rediss://` URL, read once with the meaning redis-py gives them, so that
segue's own connection (`_fastconn`) verifies the server exactly as the redis-py clients do.

URL query options: `ssl_ca_certs` (CA bundle file), `ssl_certfile` / `ssl_keyfile` (client
certificate), `ssl_cert_reqs` (`required`, the default: the server's certificate must chain
to a trusted CA; `optional`; `none`: no verification, only when asked for), and
`ssl_check_hostname` (default true whenever certificates are verified).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from urllib.parse import parse_qs, urlsplit

from segue._errors import ConfigurationError

OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
_CERT_REQS = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}
_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n", ""}


@dataclasses.dataclass(frozen=True)
class TLSOptions:
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    cert_reqs: ssl.VerifyMode = ssl.CERT_REQUIRED
    check_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        """A client context: the system's CAs plus `ca_certs`, and the client certificate."""
        ctx = ssl.create_default_context()
        # check_hostname must be off before verify_mode may drop to CERT_NONE
        ctx.check_hostname = self.check_hostname and self.cert_reqs != ssl.CERT_NONE
        ctx.verify_mode = self.cert_reqs
        if self.ca_certs is not None:
            ctx.load_verify_locations(cafile=self.ca_certs)
        if self.certfile is not None or self.keyfile is not None:
            ctx.load_cert_chain(certfile=self.certfile or self.keyfile or "", keyfile=self.keyfile)
        return ctx


def options(url: str) -> TLSOptions | None:
    """The TLS options of `url`, None for a plaintext URL; a malformed option raises
    ConfigurationError naming it."""
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    given = [name for name in OPTIONS if name in query]
    if not parts.scheme.startswith("rediss"):
        if given:
            raise ConfigurationError(
                f"the Redis URL sets {given[0]} but its scheme is {parts.scheme}://: "
                "use rediss:// to connect over TLS"
            )
        return None
    reqs_text = query.get("ssl_cert_reqs", "required").lower()
    if reqs_text not in _CERT_REQS:
        raise ConfigurationError(
            f"ssl_cert_reqs in the Redis URL must be none, optional or required, not {reqs_text!r}"
        )
    check_text = query.get("ssl_check_hostname", "true").lower()
    if check_text not in _TRUE | _FALSE:
        raise ConfigurationError(
            f"ssl_check_hostname in the Redis URL must be true or false, not {check_text!r}"
        )
    cert_reqs = _CERT_REQS[reqs_text]
    return TLSOptions(
        ca_certs=query.get("ssl_ca_certs"),
        certfile=query.get("ssl_certfile"),
        keyfile=query.get("ssl_keyfile"),
        cert_reqs=cert_reqs,
        check_hostname=check_text in _TRUE and cert_reqs != ssl.CERT_NONE,
    )


def handshake_failure(exc: BaseException) -> str | None:
    """Why TLS failed, if an ssl error is `exc` or among its causes (redis-py wraps it)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return f"its certificate did not verify ({current.verify_message})"
        if isinstance(current, ssl.SSLError):
            return _explain((current.reason or current.strerror or str(current)).lower())
        current = current.__cause__ or current.__context__
    # redis-py reports a read that failed inside TLS as text only
    text = str(exc)
    if "[SSL" in text:
        return _explain(text.split("[SSL", 1)[1].split("]", 1)[-1].split("(_ssl", 1)[0])
    return None


def _explain(reason: str) -> str:
    reason = reason.replace("_", " ").strip(" '\")")
    if "certificate required" in reason:
        return f"{reason} (the server wants a client certificate: ssl_certfile, ssl_keyfile)"
    return reason


async def probe(url: str, timeout: float = 5.0) -> str | None:
    """Why TLS to the server of `url` fails, found by one fresh handshake and PING.

    redis-py reports a server that refuses the client's certificate as a bare reset, since
    TLS 1.3 tells the client only at its first read; asyncio's stream keeps the alert."""
    tls = options(url)
    if tls is None:
        return None
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=tls.context())
            try:
                writer.write(b"PING\r\n")
                await writer.drain()
                await reader.read(64)
            finally:
                writer.transport.abort()  # a TLS close would wait for the server's reply
    except (OSError, TimeoutError) as exc:
        return handshake_failure(exc)
    return None


async def speaks_tls(url: str, timeout: float = 2.0) -> bool:
    """Whether the server of a plaintext `url` completes a TLS handshake (unverified, and
    nothing is sent over it): tells "use rediss://" apart from a server that is down."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        return False
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(
                parts.hostname or "127.0.0.1", parts.port or 6379, ssl=ctx
            )
            writer.transport.abort()
    except (OSError, TimeoutError):
        return False
    return True

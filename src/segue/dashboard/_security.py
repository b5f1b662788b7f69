"""Who may use the dashboard, and how a request proves it: one ASGI middleware.

Every request passes the gate, in this order:

0. a `Host` header outside the allow-list is refused (400), so a page of another site that
   rebinds its name to this address (DNS rebinding) cannot read or steer the dashboard;
1. a request body larger than the limit is refused (413) before the app reads it;
2. outside the public paths (`/health`, `/metrics`, `/login`, `/static/`), the request must
   carry a valid session cookie (from the login form) or HTTP Basic credentials; a browser
   asking for a page is sent to the login form, anything else gets 401;
3. every request that is not GET/HEAD/OPTIONS must carry the CSRF token of its
   `segue_csrf` cookie, as the form field `csrf` or the `X-CSRF-Token` header, and an
   Origin header, when it has one, must be this host. This holds with `auth=None` too,
   since a browser on the operator's machine can be made to post to a loopback dashboard.

Tokens and session cookies are HMAC-signed with a secret (random per process unless given;
at least 32 bytes), sessions with a key bound to a hash of the credentials too (a password
change voids them), and each session carries the server-side session generation, which a
logout moves on. Every password check, by form or HTTP Basic, passes a limiter per client
address and one across all of them. Every comparison of a secret value goes through
`hmac.compare_digest`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import hashlib
import hmac
import secrets
import time
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qs, quote, urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from segue._errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Collection

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

SESSION_COOKIE = "segue_session"
CSRF_COOKIE = "segue_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_PATHS = frozenset({"/health", "/metrics", "/login"})
PUBLIC_PREFIXES = ("/static/",)
QUIET_PATHS = frozenset({"/health", "/metrics"})
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
MIN_PASSWORD_LENGTH = 12
MIN_SECRET_BYTES = 32
FAILURE_DELAY = 0.3  # seconds each failed password check costs its sender
CLOCK_SLACK = 60  # seconds a session's issue time may be ahead of ours (clock skew)
# no inline script or style anywhere: the pages load one stylesheet and one script
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


def relative_path(scope: Scope) -> str:
    """The request path inside the dashboard, whether it is served at / or mounted."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


def root_of(scope: Scope) -> str:
    root: str = scope.get("root_path", "")
    return root.rstrip("/")


def safe_next(value: str | None) -> str:
    """A place to go back to after an action or login: a path of this dashboard only,
    never another site (`//evil.example`, `https://...`, `/\\evil`)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if urlsplit(value).netloc:
        return "/"
    return value


class LoginThrottle:
    """Failed password checks (form or HTTP Basic) per client address, and over all
    addresses: after `limit` failures of one address within `window` seconds it is refused
    (429) until the oldest of them is older than the window; after `global_limit` failures of
    all addresses together everyone's password checks wait the same way, so rotating
    addresses buys no more guesses. A signed-in session is never refused: the limiter guards
    password checks only. Memory is bounded by pruning on use."""

    def __init__(self, limit: int = 5, window: float = 60.0, global_limit: int = 50) -> None:
        self.limit = limit
        self.window = window
        self.global_limit = global_limit
        self._failures: dict[str, list[float]] = {}
        self._all: collections.deque[float] = collections.deque(maxlen=global_limit)

    def _recent(self, who: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(who, ()) if now - t < self.window]
        if times:
            self._failures[who] = times
        else:
            self._failures.pop(who, None)
        return times

    def retry_after(self, who: str) -> float:
        """Seconds this client must wait before it may try again (0: it may now)."""
        now = time.monotonic()
        times = self._recent(who, now)
        wait = 0.0
        if len(times) >= self.limit:
            wait = self.window - (now - times[-self.limit])
        if len(self._all) >= self.global_limit:
            wait = max(wait, self.window - (now - self._all[0]))
        return max(0.0, wait)

    def failed(self, who: str) -> None:
        now = time.monotonic()
        if len(self._failures) > 10_000:  # many addresses: forget those with no recent failure
            for key in list(self._failures):
                self._recent(key, now)
        self._failures.setdefault(who, []).append(now)
        self._all.append(now)

    def succeeded(self, who: str) -> None:
        self._failures.pop(who, None)


def client_address(scope: Scope, trusted_proxies: Collection[str]) -> str:
    """The address a request came from: the socket peer, unless that peer is a trusted
    proxy, whose `X-Forwarded-For` then names it (the rightmost address no trusted proxy
    added). A header from anyone else is ignored: it is the sender's to invent."""
    client = scope.get("client")
    peer = str(client[0]) if client else "-"
    if peer not in trusted_proxies:
        return peer
    forwarded: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            forwarded += [a.strip() for a in value.decode("latin-1").split(",") if a.strip()]
    for address in reversed(forwarded):
        if address not in trusted_proxies:
            return address
    return peer


def host_name(host: str) -> str:
    """The name of a `Host` header, without its port (`[::1]:8080` → `::1`)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def check_credentials(credentials: tuple[str, str] | None) -> None:
    if credentials is None:
        return
    if not credentials[0]:
        raise ConfigurationError("dashboard auth needs a non-empty user name")
    if len(credentials[1]) < MIN_PASSWORD_LENGTH:
        raise ConfigurationError(
            f"the dashboard password has {len(credentials[1])} characters; use at least "
            f"{MIN_PASSWORD_LENGTH} (a long random one: it guards every task's arguments)"
        )


def check_secret(secret: bytes) -> bytes:
    """A signing secret strong enough that one signed token cannot reveal it offline."""
    if len(secret) < MIN_SECRET_BYTES or len(set(secret)) < 8:
        raise ConfigurationError(
            f"the dashboard secret must hold at least {MIN_SECRET_BYTES} random bytes (got "
            f"{len(secret)}); make one with `python -c 'import secrets; "
            "print(secrets.token_hex(32))'`, or give none and segue generates it"
        )
    return secret


class SessionGenerations(Protocol):
    """Where the session generation lives (the App's server: shared by every dashboard)."""

    async def current(self) -> int: ...

    async def advance(self) -> int: ...


class _LocalGenerations:
    def __init__(self) -> None:
        self.value = 0

    async def current(self) -> int:
        return self.value

    async def advance(self) -> int:
        self.value += 1
        return self.value


class Security:
    """The dashboard's credentials and secret, and the checks built on them."""

    def __init__(
        self,
        credentials: tuple[str, str] | None,
        *,
        secret: bytes,
        session_seconds: float,
        secure_cookies: bool,
        allowed_hosts: Collection[str] | None = None,
        trusted_proxies: Collection[str] = (),
        generations: SessionGenerations | None = None,
    ) -> None:
        check_credentials(credentials)
        self._user = credentials[0].encode() if credentials else b""
        self._password = credentials[1].encode() if credentials else b""
        self.enabled = credentials is not None
        self._secret = check_secret(secret)
        # sessions are signed with a key of the secret *and* the credentials: a password
        # change voids every session signed before it, with no list of them to keep
        bound = hashlib.sha256(self._user + b"\0" + self._password).digest()
        self._session_key = hmac.new(self._secret, b"session-key|" + bound, "sha256").digest()
        self.session_seconds = session_seconds
        self.secure_cookies = secure_cookies
        self.allowed_hosts = (
            None if allowed_hosts is None else frozenset(host_name(h) for h in allowed_hosts)
        )
        self.trusted_proxies = frozenset(trusted_proxies)
        self.generations: SessionGenerations = generations or _LocalGenerations()
        self.logins = LoginThrottle()

    def host_allowed(self, host: str | None) -> bool:
        if self.allowed_hosts is None:
            return True
        return host is not None and host_name(host) in self.allowed_hosts

    def client_of(self, request: Request) -> str:
        return client_address(request.scope, self.trusted_proxies)

    async def password_check(self, who: str, user: str, password: str) -> tuple[bool, float]:
        """Check credentials through the limiter: (whether they are right, seconds this
        client must wait before it may try again; when positive, nothing was checked). A
        wrong guess costs a delay, which slows guessing over one connection."""
        wait = self.logins.retry_after(who)
        if wait > 0:
            return False, wait
        if self.check_password(user, password):
            self.logins.succeeded(who)
            return True, 0.0
        self.logins.failed(who)
        await asyncio.sleep(FAILURE_DELAY)
        return False, 0.0

    # --- credentials ----------------------------------------------------------------------

    def check_password(self, user: str, password: str) -> bool:
        """Whether these are the dashboard's credentials. Both parts are always compared in
        constant time, so neither how much of a guess matched nor which part was wrong can
        be timed."""
        user_ok = hmac.compare_digest(user.encode(), self._user)
        password_ok = hmac.compare_digest(password.encode(), self._password)
        return user_ok & password_ok

    @staticmethod
    def basic_credentials(header: str | None) -> tuple[str, str] | None:
        if not header or header[:6].lower() != "basic ":
            return None
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        return (user, password) if sep else None

    # --- signed values ----------------------------------------------------------------------

    def _sign(self, purpose: str, text: str, key: bytes | None = None) -> str:
        mac = hmac.new(key or self._secret, f"{purpose}|{text}".encode(), hashlib.sha256)
        return mac.hexdigest()

    def _signed(self, purpose: str, value: str | None, key: bytes | None = None) -> str | None:
        """The payload of a `payload.signature` value, when the signature is ours."""
        if not value:
            return None
        text, _, sig = value.rpartition(".")
        if not text:
            return None
        if not hmac.compare_digest(sig.encode(), self._sign(purpose, text, key).encode()):
            return None
        return text

    async def new_session(self, user: str) -> str:
        who = base64.urlsafe_b64encode(user.encode()).decode().rstrip("=")
        generation = await self.generations.current()
        text = f"{who}.{int(time.time())}.{generation}.{secrets.token_hex(8)}"
        return f"{text}.{self._sign('session', text, self._session_key)}"

    async def session_user(self, value: str | None) -> str | None:
        text = self._signed("session", value, self._session_key)
        if text is None:
            return None
        parts = text.split(".")
        if len(parts) != 4 or not parts[1].isdigit() or not parts[2].isdigit():
            return None
        who, issued, generation = parts[0], int(parts[1]), int(parts[2])
        age = time.time() - issued
        if age > self.session_seconds or age < -CLOCK_SLACK:  # expired, or dated ahead
            return None
        if generation != await self.generations.current():  # signed out since
            return None
        try:
            user = base64.urlsafe_b64decode(who + "=" * (-len(who) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user if hmac.compare_digest(user.encode(), self._user) else None

    async def end_sessions(self) -> None:
        """Sign out: every session issued so far ends, in every dashboard of this server."""
        await self.generations.advance()

    def new_csrf(self) -> str:
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._sign('csrf', nonce)}"

    def csrf_valid(self, token: str | None) -> bool:
        return self._signed("csrf", token) is not None

    # --- requests ---------------------------------------------------------------------------

    async def user_of(self, request: Request) -> str | None:
        """The user of a request's session cookie, or None ("" when authentication is off)."""
        if not self.enabled:
            return ""
        return await self.session_user(request.cookies.get(SESSION_COOKIE))

    def cookie(self, name: str, value: str, root: str, *, max_age: int | None = None) -> str:
        parts = [f"{name}={value}", f"Path={root or '/'}", "HttpOnly", "SameSite=Strict"]
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        if self.secure_cookies:
            parts.append("Secure")
        return "; ".join(parts)


class Gate:
    """The ASGI middleware that applies the checks above to every HTTP request."""

    def __init__(self, app: ASGIApp, security: Security, max_body_bytes: int) -> None:
        self.app = app
        self.security = security
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if not self.security.host_allowed(request.headers.get("host")):
            refused = PlainTextResponse("this Host is not served (see --allowed-host)", 400)
            await refused(scope, receive, send)
            return
        root = root_of(scope)
        path = relative_path(scope)
        token = request.cookies.get(CSRF_COOKIE)
        fresh: str | None = None
        # probes, scrapers and static files get no cookie: they never post a form
        quiet = path in QUIET_PATHS or path.startswith(PUBLIC_PREFIXES)
        if not quiet and not self.security.csrf_valid(token):
            token = fresh = self.security.new_csrf()
        state = scope.setdefault("state", {})
        state["csrf"] = token
        send = self._decorate(send, fresh, root)

        if path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES):
            user = await self.security.user_of(request)
            if user is None:
                user_or_refusal = await self._basic(request)
                if isinstance(user_or_refusal, Response):
                    await user_or_refusal(scope, receive, send)
                    return
                user = user_or_refusal
            if user is None:
                await self._challenge(request, root, path)(scope, receive, send)
                return
            state["user"] = user

        if scope["method"] not in SAFE_METHODS:
            body = await self._read_body(request, receive)
            if body is None:
                await PlainTextResponse("request body too large", 413)(scope, receive, send)
                return
            # a cookie minted for this very request was never seen by the page that posted
            known = token if fresh is None and self.security.csrf_valid(token) else None
            sent = self._submitted_token(request, body) if known else None
            if not known or sent is None or not hmac.compare_digest(sent.encode(), known.encode()):
                await PlainTextResponse("CSRF token missing or wrong", 403)(scope, receive, send)
                return
            if not self._same_origin(request):
                await PlainTextResponse("cross-origin request refused", 403)(scope, receive, send)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    async def _basic(self, request: Request) -> str | Response | None:
        """The user of valid HTTP Basic credentials, through the same limiter as the form."""
        credentials = self.security.basic_credentials(request.headers.get("authorization"))
        if credentials is None:
            return None
        ok, wait = await self.security.password_check(
            self.security.client_of(request), *credentials
        )
        if ok:
            return credentials[0]
        if wait <= 0:
            return None
        retry = str(int(wait) + 1)
        return PlainTextResponse("too many failed sign-ins", 429, headers={"retry-after": retry})

    def _challenge(self, request: Request, root: str, path: str) -> Response:
        wants_page = request.method == "GET" and "text/html" in request.headers.get("accept", "")
        if wants_page:
            here = path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"{root}/login?next={quote(here, safe='')}", 303)
        return PlainTextResponse(
            "authentication required",
            401,
            headers={"www-authenticate": 'Basic realm="segue dashboard", charset="UTF-8"'},
        )

    async def _read_body(self, request: Request, receive: Receive) -> bytes | None:
        """The whole body, or None past the limit (checked on the declared length first,
        then on what actually arrives, which a client can make longer)."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    @staticmethod
    def _submitted_token(request: Request, body: bytes) -> str | None:
        header = request.headers.get(CSRF_HEADER)
        if header:
            return header
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            values = parse_qs(body.decode("latin-1"), max_num_fields=50).get(CSRF_FIELD)
            return values[0] if values else None
        return None

    @staticmethod
    def _same_origin(request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None:
            return True  # no Origin (an older browser, a script): the token alone decides
        return urlsplit(origin).netloc == request.headers.get("host", "")

    def _decorate(self, send: Send, fresh_csrf: str | None, root: str) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name for name, _ in headers}
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in names)
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                if fresh_csrf is not None:
                    cookie = self.security.cookie(CSRF_COOKIE, fresh_csrf, root)
                    headers.append((b"set-cookie", cookie.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        return wrapped


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the already-read body to the app, then passes on what the
    client sends next (its disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay

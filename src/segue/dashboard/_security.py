"""Who may use the dashboard, and how a request proves it: one ASGI middleware.

Every request passes the gate, in this order:

1. a request body larger than the limit is refused (413) before the app reads it;
2. outside the public paths (`/health`, `/metrics`, `/login`, `/static/`), the request must
   carry a valid session cookie (from the login form) or HTTP Basic credentials; a browser
   asking for a page is sent to the login form, anything else gets 401;
3. every request that is not GET/HEAD/OPTIONS must carry the CSRF token of its
   `segue_csrf` cookie, as the form field `csrf` or the `X-CSRF-Token` header, and an
   Origin header, when it has one, must be this host. This holds with `auth=None` too,
   since a browser on the operator's machine can be made to post to a loopback dashboard.

Tokens and session cookies are HMAC-signed with a secret (random per process unless given),
and every comparison of a secret value goes through `hmac.compare_digest`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote, urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

SESSION_COOKIE = "segue_session"
CSRF_COOKIE = "segue_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_PATHS = frozenset({"/health", "/metrics", "/login"})
PUBLIC_PREFIXES = ("/static/",)
QUIET_PATHS = frozenset({"/health", "/metrics"})
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
    """Failed sign-ins per client address: after `limit` failures within `window` seconds the
    form answers 429 until the oldest of them is older than the window, so a password
    cannot be guessed at the speed of the network. Memory is bounded by pruning on use."""

    def __init__(self, limit: int = 5, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, list[float]] = {}

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
        if len(times) < self.limit:
            return 0.0
        return max(0.0, self.window - (now - times[-self.limit]))

    def failed(self, who: str) -> None:
        now = time.monotonic()
        if len(self._failures) > 10_000:  # many addresses: forget those with no recent failure
            for key in list(self._failures):
                self._recent(key, now)
        self._failures.setdefault(who, []).append(now)

    def succeeded(self, who: str) -> None:
        self._failures.pop(who, None)


class Security:
    """The dashboard's credentials and secret, and the checks built on them."""

    def __init__(
        self,
        credentials: tuple[str, str] | None,
        *,
        secret: bytes,
        session_seconds: float,
        secure_cookies: bool,
    ) -> None:
        self._user = credentials[0].encode() if credentials else b""
        self._password = credentials[1].encode() if credentials else b""
        self.enabled = credentials is not None
        self._secret = secret
        self.session_seconds = session_seconds
        self.secure_cookies = secure_cookies
        self.logins = LoginThrottle()

    # --- credentials ----------------------------------------------------------------------

    def check_password(self, user: str, password: str) -> bool:
        """Whether these are the dashboard's credentials. Both parts are always compared in
        constant time, so neither how much of a guess matched nor which part was wrong can
        be timed."""
        user_ok = hmac.compare_digest(user.encode(), self._user)
        password_ok = hmac.compare_digest(password.encode(), self._password)
        return user_ok & password_ok

    def basic_user(self, header: str | None) -> str | None:
        if not header or header[:6].lower() != "basic ":
            return None
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        return user if sep and self.check_password(user, password) else None

    # --- signed values ----------------------------------------------------------------------

    def _sign(self, purpose: str, text: str) -> str:
        mac = hmac.new(self._secret, f"{purpose}|{text}".encode(), hashlib.sha256)
        return mac.hexdigest()

    def _signed(self, purpose: str, value: str | None) -> str | None:
        """The payload of a `payload.signature` value, when the signature is ours."""
        if not value:
            return None
        text, _, sig = value.rpartition(".")
        if not text or not hmac.compare_digest(sig.encode(), self._sign(purpose, text).encode()):
            return None
        return text

    def new_session(self, user: str) -> str:
        who = base64.urlsafe_b64encode(user.encode()).decode().rstrip("=")
        text = f"{who}.{int(time.time())}.{secrets.token_hex(8)}"
        return f"{text}.{self._sign('session', text)}"

    def session_user(self, value: str | None) -> str | None:
        text = self._signed("session", value)
        if text is None:
            return None
        who, _, rest = text.partition(".")
        issued, _, _nonce = rest.partition(".")
        if not issued.isdigit() or time.time() - int(issued) > self.session_seconds:
            return None
        user = base64.urlsafe_b64decode(who + "=" * (-len(who) % 4)).decode()
        # a session signed for another user name (the credentials changed) is void
        return user if hmac.compare_digest(user.encode(), self._user) else None

    def new_csrf(self) -> str:
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._sign('csrf', nonce)}"

    def csrf_valid(self, token: str | None) -> bool:
        return self._signed("csrf", token) is not None

    # --- requests ---------------------------------------------------------------------------

    def user_of(self, request: Request) -> str | None:
        """The authenticated user of a request, or None ("" when authentication is off)."""
        if not self.enabled:
            return ""
        user = self.session_user(request.cookies.get(SESSION_COOKIE))
        if user is None:
            user = self.basic_user(request.headers.get("authorization"))
        return user

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
            user = self.security.user_of(request)
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

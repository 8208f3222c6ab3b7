"""Pure ASGI middleware: security headers on the pages and static files the server serves (the API routes are left
as they are): a strict Content-Security-Policy with no inline script, no framing, no sniffing, no referrer."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# No inline script anywhere; model output the chat page renders can neither run script nor load from elsewhere.
STRICT_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI sets inline styles: its page alone allows them.
INLINE_STYLES_POLICY = STRICT_POLICY.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, *, pages: frozenset[str], prefixes: tuple[str, ...],
                 inline_styles: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.pages = pages
        self.prefixes = prefixes
        self.inline_styles = inline_styles

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path in self.pages or path.startswith(self.prefixes)):
            await self.app(scope, receive, send)
            return

        policy = INLINE_STYLES_POLICY if path in self.inline_styles else STRICT_POLICY

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"content-security-policy", policy.encode()),
                                      *HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)

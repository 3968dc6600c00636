"""The HTTP server's limits (its defences against slow and greedy clients), apart from
ustack/apps/http.py so that the command line can show their defaults without h11."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What a client may cost us; defaults are nginx's (ngx_http_core_module)."""

    header_timeout: float = 60.0  # client_header_timeout: the whole request head
    keepalive_timeout: float = 75.0  # keepalive_timeout: idle between requests
    body_timeout: float = 60.0  # client_body_timeout: between two body reads
    send_timeout: float = 60.0  # send_timeout: between two successful writes
    # large_client_header_buffers 4 8k: one line must fit one 8 KiB buffer, the head 4.
    max_request_line: int = 8192
    max_header_line: int = 8192
    max_head: int = 32768
    max_body: int = 1024 * 1024  # client_max_body_size 1m
    # After an error response the rest of the request is read and dropped for up to
    # lingering_time, lingering_timeout per read (nginx's lingering_close): closing
    # with it unread would send RST (RFC 9293 3.10.4), which can destroy the response
    # before the client has read it.
    lingering_time: float = 30.0
    lingering_timeout: float = 5.0

    def __post_init__(self) -> None:
        for name in ("header_timeout", "keepalive_timeout", "body_timeout", "send_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if min(self.max_request_line, self.max_header_line, self.max_head) < 64:
            raise ValueError("line and head limits must be at least 64 bytes")
        if self.max_body < 0:
            raise ValueError("max_body must not be negative")

"""Built-in services (HTTP, echo, discard), written against the asyncio streams API only.

Each module exposes one coroutine taking a `start_server` callable with the signature of
`asyncio.start_server`, so the same code runs on ustack (`stack.start_server`) and on the
kernel's stack in tests.
"""

"""Differential suite: loop.sendfile() and TLS (asyncio's sslproto) over a transport,
kernel sockets vs ustack (tests/dropin)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from dropin import Deviation, Rec, case, check, outcome, stream_pair

pytestmark = pytest.mark.netns

PAYLOAD = os.urandom(300_000) + b"end"


def _file(tmp: Path) -> Path:
    path = tmp / "payload.bin"
    if not path.exists():
        path.write_bytes(PAYLOAD)
    return path


TMP = Path(os.environ.get("TMPDIR", "/tmp")) / f"ustack-dropin-{os.getpid()}"


@pytest.fixture(autouse=True, scope="module")
def _cleanup():
    """The payload and the certificates are the module's; gone after it."""
    yield
    shutil.rmtree(TMP, ignore_errors=True)


@case(Deviation("no_fallback", None, "RuntimeError",
                "no sendfile(2) from a file into a userspace stack: ustack's transports "
                "declare asyncio's FALLBACK mode (read and write in 16 KiB blocks), so "
                "fallback=False is refused with asyncio's RuntimeError"),
      uvloop=False)  # uvloop's loop has no sendfile() (NotImplementedError), kernel or not
async def sendfile_whole_and_ranges(net, rec: Rec) -> None:
    TMP.mkdir(exist_ok=True)
    path = _file(TMP)
    loop = asyncio.get_running_loop()
    server, (cr, cw), (sr, sw) = await stream_pair(net)
    with open(path, "rb") as f:
        rec["whole"] = await loop.sendfile(cw.transport, f)
        rec["pos_after_whole"] = f.tell()
        rec["range"] = await loop.sendfile(cw.transport, f, offset=1000, count=5000)
        rec["pos_after_range"] = f.tell()
        rec["tail"] = await loop.sendfile(cw.transport, f, offset=len(PAYLOAD) - 3)
    cw.write(b"|after")  # the transport is usable again: its protocol restored
    cw.write_eof()
    got = await asyncio.wait_for(sr.read(), 30)
    want = PAYLOAD + PAYLOAD[1000:6000] + b"end" + b"|after"
    rec["received"] = (len(got), hashlib.sha256(got).hexdigest() ==
                       hashlib.sha256(want).hexdigest())
    cw.close()
    rec["on_closing"] = await outcome(loop.sendfile(cw.transport, open(path, "rb")))
    sw.close()
    await sw.wait_closed()
    await cw.wait_closed()
    # fallback=False: only a native sendfile(2) may do it
    _, (cr, cw), (sr, sw) = await stream_pair(net)
    with open(path, "rb") as f:
        rec["no_fallback"] = await outcome(loop.sendfile(cw.transport, f, fallback=False))
    cw.close()
    sw.close()
    await cw.wait_closed()
    server.close()


def _certs() -> tuple[Path, Path]:
    TMP.mkdir(exist_ok=True)
    cert, key = TMP / "cert.pem", TMP / "key.pem"
    if not cert.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-keyout", str(key), "-out", str(cert), "-days", "2",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                       check=True, capture_output=True, timeout=60)
    return cert, key


@case()
async def tls_streams(net, rec: Rec) -> None:
    """asyncio's own TLS (sslproto) over the transport: start_server(ssl=...) and
    open_connection(ssl=..., server_hostname=...)."""
    cert, key = _certs()
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    cctx = ssl.create_default_context(cafile=str(cert))
    got: asyncio.Future = asyncio.get_running_loop().create_future()

    async def cb(reader, writer):
        data = await reader.readline()
        writer.write(data.upper())
        await writer.drain()
        rec["server_cipher"] = writer.get_extra_info("cipher") is not None
        rec["server_ssl_object"] = type(writer.get_extra_info("ssl_object")).__name__
        writer.close()
        got.set_result(data)

    api = net.server_api()
    server = await api.start_server(cb, net.host, 0, ssl=sctx, ssl_handshake_timeout=10)
    port = server.sockets[0].getsockname()[1]
    r, w = await net.client_api().open_connection(net.host, port, ssl=cctx,
                                                  server_hostname="localhost")
    rec["peercert_cn"] = dict(x[0] for x in w.get_extra_info("peercert")["subject"])
    w.write(b"hello over tls\n")
    rec["reply"] = await asyncio.wait_for(r.readline(), 10)
    rec["server_got"] = await asyncio.wait_for(got, 10)
    rec["eof"] = await asyncio.wait_for(r.read(), 10)
    w.close()
    rec["wait_closed"] = await outcome(w.wait_closed())
    rec["bad_hostname"] = await outcome(net.client_api().open_connection(
        net.host, port, ssl=cctx, server_hostname="not-localhost"))
    server.close()


# uvloop's loop.start_tls() takes only uvloop's own transports (TypeError for any other,
# "is not supported by start_tls()"), so this case runs on asyncio's loop only.
@case(uvloop=False)
async def start_tls_upgrade(net, rec: Rec) -> None:
    """A plain connection upgraded in place: StreamWriter.start_tls() on both ends
    (loop.start_tls() over the transport)."""
    cert, key = _certs()
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    cctx = ssl.create_default_context(cafile=str(cert))
    server, (cr, cw), (sr, sw) = await stream_pair(net)
    cw.write(b"STARTTLS\n")
    rec["plain"] = await asyncio.wait_for(sr.readline(), 10)
    sw.write(b"GO\n")
    await sw.drain()
    rec["go"] = await asyncio.wait_for(cr.readline(), 10)
    up_server = asyncio.ensure_future(sw.start_tls(sctx))
    await cw.start_tls(cctx, server_hostname="localhost")
    await asyncio.wait_for(up_server, 10)
    rec["client_tls"] = cw.get_extra_info("ssl_object") is not None
    cw.write(b"secret\n")
    rec["secret"] = await asyncio.wait_for(sr.readline(), 10)
    sw.write(b"reply\n")
    rec["reply"] = await asyncio.wait_for(cr.readline(), 10)
    cw.close()
    rec["client_wait_closed"] = await outcome(cw.wait_closed())
    rec["server_eof"] = await asyncio.wait_for(sr.read(), 10)
    sw.close()
    rec["server_wait_closed"] = await outcome(sw.wait_closed())
    server.close()


@pytest.mark.parametrize("spec", [sendfile_whole_and_ranges, tls_streams, start_tls_upgrade],
                         ids=lambda s: s.fn.__name__)
async def test_sendfile_tls(inside_netns, spec) -> None:
    await check(spec)

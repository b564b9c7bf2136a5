"""Telling systemd (or any service manager speaking its notify protocol) how the node is doing.

With ``Type=notify`` in a unit, systemd considers the service started only when it says
``READY=1``, so units ordered after Navistore start once it listens and its Store is open, not
merely once the process exists. The protocol is one datagram of ``NAME=value`` lines to the
``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (``@`` for Linux's abstract namespace): a few
lines of standard library, no dependency (see sd_notify(3)).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from twisted.logger import Logger

__all__ = ["notify"]

log = Logger()


def notify(*assignments: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``assignments`` (``"READY=1"``, ``"STATUS=..."``) to the service manager; whether
    there was one to tell. A failure to send is logged, never raised: the node serves anyway."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address or not assignments:
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    message = "\n".join(assignments).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(target)
            sock.sendall(message)
    except OSError as exc:
        log.warn(
            "could not notify the service manager at {address}: {error}", address=address, error=exc
        )
        return False
    return True

"""The yardstick: the leanest twisted.web server that does what a key/value GET and PUT do.

GET answers a fixed 100-byte body; PUT reads the body and answers ``OK``. No access log. Every
Navistore figure in ``bench/`` is reported as a ratio to this server, run on the same Python,
the same machine, in the same run.

Usage: ``python bench/bare_server.py PORT``
"""

from __future__ import annotations

import sys

from twisted.internet import endpoints, reactor
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

BODY = b"v" * 100


class Bare(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/octet-stream")
        return BODY

    def render_PUT(self, request: Request) -> bytes:
        request.content.read()
        request.setHeader(b"Content-Type", b"text/plain")
        return b"OK"


class QuietSite(Site):
    def log(self, request: Request) -> None:
        """No access log (Navistore's default is off too)."""


def main() -> None:
    port = int(sys.argv[1])
    endpoint = endpoints.TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")
    endpoint.listen(QuietSite(Bare()))
    reactor.run()


if __name__ == "__main__":
    main()

"""Makes ``twistd navistore`` available once Navistore is installed.

The ServiceMaker is lazy: listing twistd's plugins (``twistd --help``) does not import Navistore;
only running ``twistd navistore`` loads :mod:`navistore.tap`. There is deliberately no
``__init__.py`` in ``twisted/`` or ``twisted/plugins/``: this directory extends Twisted's own
plugin package instead of replacing it.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import ServiceMaker
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer

navistore = ServiceMaker(
    "navistore",
    "navistore.tap",
    "A replicated HTTP key/value store (listens on --port, stores in --backend).",
    "navistore",
)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _MutualTLSParser:
    """``mtls:`` endpoint strings (see :mod:`navistore.tls_endpoint`), imported on first use."""

    prefix = "mtls"

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        from navistore.tls_endpoint import mutual_tls_endpoint

        return mutual_tls_endpoint(reactor, *args, **kwargs)


mtls = _MutualTLSParser()

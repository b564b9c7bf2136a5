"""Makes ``twistd navistore`` available once Navistore is installed.

The ServiceMaker is lazy: listing twistd's plugins (``twistd --help``) does not import Navistore;
only running ``twistd navistore`` loads :mod:`navistore.tap`. There is deliberately no
``__init__.py`` in ``twisted/`` or ``twisted/plugins/``: this directory extends Twisted's own
plugin package instead of replacing it.
"""

from __future__ import annotations

from twisted.application.service import ServiceMaker

navistore = ServiceMaker(
    "navistore",
    "navistore.tap",
    "A replicated HTTP key/value store (listens on --port, stores in --backend).",
    "navistore",
)

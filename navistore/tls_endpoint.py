"""``mtls:`` server endpoints: TLS that requires a client certificate (mutual TLS for peers).

Twisted's ``ssl:`` endpoint string cannot ask clients for a certificate. ``mtls:`` takes the
same arguments plus ``caCerts=<PEM file>``; a client must present a certificate signed by one of
those authorities, or the handshake fails::

    twistd navistore --port mtls:8443:privateKey=key.pem:certKey=cert.pem:caCerts=peers-ca.pem

Peers then present theirs with ``--peer-cert`` and ``--peer-key``. The plugin that makes the
prefix known to ``serverFromString`` is in ``twisted/plugins/navistore_plugin.py``.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import ssl
from twisted.internet.endpoints import SSL4ServerEndpoint

__all__ = ["mutual_tls_endpoint"]

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def mutual_tls_endpoint(
    reactor: Any,
    port: str,
    privateKey: str | None = None,
    certKey: str | None = None,
    caCerts: str | None = None,
    interface: str = "",
    backlog: str = "50",
) -> SSL4ServerEndpoint:
    """The server endpoint an ``mtls:`` string describes.

    :raises ValueError: a file is missing from the description or holds no certificate.
    """
    if privateKey is None or caCerts is None:
        raise ValueError("mtls: needs privateKey= (and certKey=) and caCerts=")
    certificate = _read(certKey or privateKey)
    key = _read(privateKey)
    authorities = [ssl.Certificate.loadPEM(pem).original for pem in _PEM.findall(_read(caCerts))]
    if not authorities:
        raise ValueError(f"mtls: caCerts={caCerts} holds no PEM certificate")
    chain = [ssl.Certificate.loadPEM(pem).original for pem in _PEM.findall(certificate)[1:]]
    own = ssl.PrivateCertificate.loadPEM(certificate + b"\n" + key)
    options = ssl.CertificateOptions(
        privateKey=own.privateKey.original,
        certificate=own.original,
        extraCertChain=chain or None,
        verify=True,
        caCerts=authorities,
        requireCertificate=True,
    )
    return SSL4ServerEndpoint(reactor, int(port), options, int(backlog), interface)

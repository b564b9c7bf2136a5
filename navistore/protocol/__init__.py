"""What crosses the wire between Navistore nodes and their clients, as pure codecs.

- :mod:`~navistore.protocol.records`: a record as JSON (every field, the value in base64) and a
  value as a ``{"value", "encoding"}`` entry; the other formats are built from these two.
- :mod:`~navistore.protocol.batches`: replication batches (``/_replicate``) and their
  acknowledgements.
- :mod:`~navistore.protocol.backend_rpc`: the backend RPC a node serves for the ``http://``
  backend.

They depend only on the data modules (records, stamps, keys), so the web layer, replication,
backends, the command-line client and third-party code share one definition of each format.
"""

"""Replication: pushing every change to peers, receiving theirs, cloning a node.

``wire`` is the batch format; the replication service talks to peers over HTTP and to its own
node only through the :class:`~navistore.store.Store`.
"""

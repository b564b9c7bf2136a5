"""The cache node (``--upstream URL``): a read-through copy of another node.

:mod:`~navistore.cache_node.cache` is the node's side (copies kept fresh by the upstream's feed,
misses filled, writes forwarded); :mod:`~navistore.cache_node.upstream` what it asks of the
upstream over HTTP. It is no replication: a cache node has no peers and copies only what is read.
"""

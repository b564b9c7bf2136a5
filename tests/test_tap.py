"""``twistd navistore``: its options (navistore.tap), the node they describe, and the plugin.

How a node runs is :mod:`test_daemon`'s; how ``nhttpserver`` turns into these options is
:mod:`test_nhttpserver`'s.
"""

from __future__ import annotations

import importlib.util

import pytest
from support.processes import LOOPBACK, REPOSITORY
from twisted.application.service import MultiService
from twisted.python import usage

from navistore.daemon import NavistoreService
from navistore.keys import DEFAULT_MAX_KEY_BYTES
from navistore.tap import Options, makeService
from navistore.web import DEFAULT_MAX_VALUE_SIZE


def parse(*arguments: str) -> Options:
    """Parse ``twistd navistore`` arguments."""
    options = Options()
    options.parseOptions(list(arguments))
    return options


# -- twistd navistore options -------------------------------------------------------------------


def test_defaults() -> None:
    """Without arguments a node listens on tcp:8888 and keeps its data in ./navistore.db."""
    options = parse()
    assert options["port"] == ["tcp:8888"]
    assert options["backend"] == "sqlite:navistore.db"
    assert options["max-value-size"] == DEFAULT_MAX_VALUE_SIZE == 16 * 1024 * 1024
    assert options["max-key-bytes"] == DEFAULT_MAX_KEY_BYTES == 1024


def test_port_is_repeatable() -> None:
    """``--port`` and ``-P`` add endpoints in order (a bare number is a TCP port); any given
    replaces the default."""
    options = parse("--port", "tcp:8888", "-P", "unix:/tmp/n.sock", "--port=9000")
    assert options["port"] == ["tcp:8888", "unix:/tmp/n.sock", "tcp:9000"]


def test_options_are_not_shared_between_parses() -> None:
    """Endpoints given to one parse do not leak into the next (no shared default list)."""
    parse("--port", "tcp:1")
    assert parse()["port"] == ["tcp:8888"]


def test_sizes_are_parsed_as_integers() -> None:
    """``--max-value-size`` and ``--max-key-bytes`` take whole numbers of bytes."""
    options = parse("--max-value-size", "1048576", "--max-key-bytes", "256", "--backend", "memory:")
    assert options["max-value-size"] == 1048576
    assert options["max-key-bytes"] == 256
    assert options["backend"] == "memory:"


@pytest.mark.parametrize("option", ["--max-value-size", "--max-key-bytes"])
@pytest.mark.parametrize("value", ["lots", "1.5", "0", "-3", ""])
def test_bad_sizes_are_usage_errors(option: str, value: str) -> None:
    """A size that is not a positive whole number is refused while parsing, naming the option
    and the value."""
    with pytest.raises(usage.UsageError) as caught:
        parse(option, value)
    assert str(caught.value).startswith(f"{option}: ")
    assert repr(value) in str(caught.value) or value in str(caught.value)


def test_record_cache_size_zero_turns_the_cache_off() -> None:
    """``--record-cache-size 0`` is accepted (the README's way to turn the cache off) and
    leaves a sqlite backend unwrapped; a negative size is refused."""
    from navistore.backend.record_cache import RecordCache
    from navistore.node import cached_backend
    from navistore.tap import node_config

    config = node_config(parse("--record-cache-size", "0", "--backend", "memory:"))
    assert config.record_cache_bytes == 0
    sqlite_like = type("SqliteLike", (), {"kind": "sqlite"})()
    assert cached_backend(config, sqlite_like) is sqlite_like  # type: ignore[arg-type]
    on = node_config(parse("--record-cache-size", "4096", "--backend", "memory:"))
    assert isinstance(cached_backend(on, sqlite_like), RecordCache)  # type: ignore[arg-type]
    with pytest.raises(usage.UsageError) as caught:
        parse("--record-cache-size", "-1")
    assert str(caught.value).startswith("--record-cache-size: ")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nosuch:x", "no backend for scheme 'nosuch'"),
        ("navistore.db", "is not a backend URL"),
        (":x", "is not a backend URL"),
    ],
)
def test_bad_backend_url_is_a_usage_error(url: str, message: str) -> None:
    """A backend URL that names no backend is refused while parsing, before anything starts;
    the message says why and, for an unknown scheme, which schemes exist."""
    with pytest.raises(usage.UsageError) as caught:
        parse("--backend", url)
    assert message in str(caught.value)
    if "scheme" in message:
        assert "memory" in str(caught.value) and "sqlite" in str(caught.value)


def test_make_service_builds_an_unstarted_node() -> None:
    """makeService returns a MultiService carrying the options, and binds or opens nothing."""
    options = parse("-P", LOOPBACK, "-P", "tcp:0:interface=127.0.0.1", "--backend", "memory:")
    options["max-value-size"] = 4096
    service = makeService(options)
    assert isinstance(service, MultiService)
    assert isinstance(service, NavistoreService)
    assert service.endpoints == (LOOPBACK, "tcp:0:interface=127.0.0.1")
    assert service.config.backend_url == "memory:"
    assert service.config.max_value_size == 4096
    assert service.config.max_key_bytes == DEFAULT_MAX_KEY_BYTES
    assert not service.running
    assert service.ports == []
    assert service.store is None


def test_plugin_declares_the_navistore_tap() -> None:
    """The twistd plugin file names the command ``navistore`` and points at navistore.tap."""
    path = REPOSITORY / "twisted" / "plugins" / "navistore_plugin.py"
    assert not (REPOSITORY / "twisted" / "__init__.py").exists()
    assert not (REPOSITORY / "twisted" / "plugins" / "__init__.py").exists()
    spec = importlib.util.spec_from_file_location("navistore_plugin_under_test", path)
    assert spec is not None and spec.loader is not None
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    maker = plugin.navistore
    assert maker.tapname == "navistore"
    assert maker.module == "navistore.tap"
    assert maker.options is Options
    assert maker.makeService is makeService


# -- replication options ------------------------------------------------------------------------


def test_peers_and_clone_source_are_parsed() -> None:
    """``--peer`` is repeatable and normalised; ``--clone-from`` names one node; neither is set
    by default."""
    options = parse(
        "--peer",
        "HTTP://10.0.0.2:8888/",
        "--peer",
        "http://node-c:9000",
        "--clone-from",
        "http://10.0.0.9:8888",
    )
    assert options["peer"] == ["http://10.0.0.2:8888", "http://node-c:9000"]
    assert options["clone-from"] == "http://10.0.0.9:8888"
    defaults = parse()
    assert defaults["peer"] == [] and defaults["clone-from"] is None


@pytest.mark.parametrize("option", ["--peer", "--clone-from"])
@pytest.mark.parametrize("url", ["ftp://x:1", "not a url", "http://host-without-port"])
def test_bad_peer_urls_are_usage_errors(option: str, url: str) -> None:
    """A peer or clone source that is not an http(s) URL with a port is a usage error that
    names the option."""
    with pytest.raises(usage.UsageError, match=option):
        parse(option, url)


def test_upstream_and_read_fallback_options() -> None:
    """``--upstream`` names one node (normalised) and ``--read-fallback`` is a flag; neither is
    on by default."""
    options = parse("--upstream", "HTTP://origin:8888/")
    assert options["upstream"] == "http://origin:8888"
    assert parse("--read-fallback")["read-fallback"]
    defaults = parse()
    assert defaults["upstream"] is None and not defaults["read-fallback"]


@pytest.mark.parametrize(
    "extra", [("--peer", "http://b:1"), ("--clone-from", "http://c:2"), ("--read-fallback",)]
)
def test_a_cache_node_has_no_peers(extra: tuple[str, ...]) -> None:
    """A cache node (``--upstream``) cannot also push to peers, clone or fall back to peers:
    that is a usage error saying why."""
    with pytest.raises(usage.UsageError, match="cache node"):
        parse("--upstream", "http://origin:8888", *extra)

"""Choosing a backend by URL (navistore.backend.open_backend), third-party ones included."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from zope.interface.verify import verifyObject

from navistore.backend import (
    ENTRY_POINT_GROUP,
    BackendURL,
    BackendURLError,
    UnknownBackend,
    check_backend,
    display_url,
    known_schemes,
    open_backend,
    parse_backend_url,
)
from navistore.backend.memory import MemoryBackend
from navistore.interfaces import IStorageBackend

THIRD_PARTY_MODULE = "thirdparty_navistore_backend"

THIRD_PARTY_SOURCE = '''
"""A backend shipped by somebody else: a MemoryBackend under another name."""

from navistore.backend import BackendURLError
from navistore.backend.memory import MemoryBackend

received_urls = []


class ThirdPartyBackend(MemoryBackend):
    kind = "thirdparty"


def open_thirdparty(url):
    received_urls.append(url)
    return ThirdPartyBackend()


def open_broken(url):
    return object()


def check_thirdparty(url):
    checked_urls.append(url)
    if "bad" in url.options:
        raise BackendURLError(f"{url.text}: bad is bad")


checked_urls = []
open_thirdparty.check = check_thirdparty
'''


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """Install a fake distribution declaring ``thirdparty`` (and ``broken``) backends through the
    ``navistore.backends`` entry-point group, and yield its module once imported."""
    site = tmp_path / "site-packages"
    site.mkdir()
    (site / f"{THIRD_PARTY_MODULE}.py").write_text(THIRD_PARTY_SOURCE, encoding="utf-8")
    dist_info = site / "thirdparty_backend-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: thirdparty-backend\nVersion: 1.0\n", encoding="utf-8"
    )
    (dist_info / "entry_points.txt").write_text(
        textwrap.dedent(
            f"""\
            [{ENTRY_POINT_GROUP}]
            thirdparty = {THIRD_PARTY_MODULE}:open_thirdparty
            broken = {THIRD_PARTY_MODULE}:open_broken
            """
        ),
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    try:
        yield importlib.import_module(THIRD_PARTY_MODULE)
    finally:
        sys.modules.pop(THIRD_PARTY_MODULE, None)
        importlib.invalidate_caches()


@pytest.mark.parametrize("url", ["memory:", "MEMORY:", "Memory:"])
def test_memory_url_gives_a_memory_backend(url: str) -> None:
    """`memory:` (scheme case-insensitive) opens a fresh MemoryBackend providing the interface."""
    backend = open_backend(url)
    assert isinstance(backend, MemoryBackend)
    assert verifyObject(IStorageBackend, backend)
    assert backend.kind == "memory"
    assert backend.persistent is False
    assert open_backend(url) is not backend


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memory", "'memory' is not a backend URL (expected scheme:location, e.g."),
        ("", "'' is not a backend URL (expected scheme:location"),
        (":memory", "':memory' is not a backend URL"),
        ("mem ory:", "'mem ory:' is not a backend URL"),
        ("memory:somewhere", "memory:somewhere: memory: takes no location"),
        ("memory:///tmp/x.db", "memory:///tmp/x.db: memory: takes no location"),
        ("memory:?x=1", "memory:?x=1: unknown option(s) x; accepted: none"),
        ("memory:?b=1&a=2", "memory:?b=1&a=2: unknown option(s) a, b; accepted: none"),
    ],
)
def test_bad_urls_are_refused_clearly(url: str, message: str) -> None:
    """Malformed URLs and a memory URL with a location or options raise BackendURLError saying
    what is wrong with which URL."""
    with pytest.raises(BackendURLError) as caught:
        open_backend(url)
    assert not isinstance(caught.value, UnknownBackend)
    assert str(caught.value).startswith(message)


def test_unknown_scheme_lists_the_known_ones() -> None:
    """An unknown scheme raises UnknownBackend (a BackendURLError) naming the scheme, the URL and
    every known scheme, built-in ones included."""
    with pytest.raises(UnknownBackend) as caught:
        open_backend("nosuch:place?x=1")
    message = str(caught.value)
    assert isinstance(caught.value, BackendURLError)
    assert message.startswith(
        "no backend for scheme 'nosuch' in 'nosuch:place?x=1'; known schemes: "
    )
    listed = message.split("known schemes: ", 1)[1].split(", ")
    assert {"memory", "sqlite"} <= set(listed)
    assert listed == known_schemes()


def test_known_schemes_without_third_party_backends() -> None:
    """The built-in schemes are always known; the fake third-party one is not, until installed."""
    schemes = known_schemes()
    assert {"memory", "sqlite"} <= set(schemes)
    assert schemes == sorted(schemes)
    assert "thirdparty" not in schemes


@pytest.mark.parametrize(
    ("text", "scheme", "location", "options"),
    [
        ("memory:", "memory", "", {}),
        ("Memory://", "memory", "", {}),
        ("thing:rel/path.db?mode=FULL&x=", "thing", "rel/path.db", {"mode": "FULL", "x": ""}),
        ("thing:a%20b?k=1&k=2", "thing", "a b", {"k": "2"}),
        ("http://host:8080/base?t=1", "http", "//host:8080/base", {"t": "1"}),
        ("postgresql+async://u@h/db", "postgresql+async", "//u@h/db", {}),
    ],
)
def test_parse_backend_url(text: str, scheme: str, location: str, options: dict[str, str]) -> None:
    """A URL splits into a lower-case scheme, an unquoted location (authority kept for network
    schemes) and its options, the last of a repeated option winning."""
    assert parse_backend_url(text) == BackendURL(scheme, location, options, text)


def test_backend_url_option_checks_allowed_values() -> None:
    """option() gives the default when absent, lower-cases checked values and refuses others with
    a message naming the URL, the option and the allowed values."""
    url = parse_backend_url("thing:x?mode=FULL&bad=maybe")
    assert url.option("mode", "normal", ("normal", "full")) == "full"
    assert url.option("absent", "normal", ("normal", "full")) == "normal"
    assert url.option("bad", "d") == "maybe"
    with pytest.raises(BackendURLError) as caught:
        url.option("bad", "no", ("yes", "no"))
    assert (
        str(caught.value) == "thing:x?mode=FULL&bad=maybe: option bad='maybe' is not one of yes, no"
    )
    url.refuse_unknown_options(("mode", "bad"))
    with pytest.raises(BackendURLError, match=r"unknown option\(s\) bad; accepted: mode$"):
        url.refuse_unknown_options(("mode",))


def test_third_party_backend_is_found_through_its_entry_point(third_party: ModuleType) -> None:
    """A backend installed by another distribution under the `navistore.backends` entry-point
    group is opened by its scheme, with no server code edited, and its factory gets the parsed
    URL."""
    backend = open_backend("thirdparty:whatever?x=1")
    assert type(backend).__name__ == "ThirdPartyBackend"
    assert type(backend).__module__ == THIRD_PARTY_MODULE
    assert backend.kind == "thirdparty"
    assert verifyObject(IStorageBackend, backend)
    assert third_party.received_urls == [
        BackendURL("thirdparty", "whatever", {"x": "1"}, "thirdparty:whatever?x=1")
    ]
    received = third_party.received_urls[0]
    assert (received.scheme, received.location, received.options) == (
        "thirdparty",
        "whatever",
        {"x": "1"},
    )


def test_third_party_scheme_is_listed(third_party: ModuleType) -> None:
    """known_schemes() lists an installed third-party scheme next to the built-in ones, and so
    does the UnknownBackend message."""
    assert {"memory", "sqlite", "thirdparty"} <= set(known_schemes())
    with pytest.raises(UnknownBackend, match="thirdparty"):
        open_backend("nosuch:")


def test_factory_that_gives_no_backend_is_refused(third_party: ModuleType) -> None:
    """A registered factory returning something that does not provide IStorageBackend is an
    error naming the scheme, not a broken backend handed to the server."""
    with pytest.raises(BackendURLError, match="the factory for 'broken' gave no IStorageBackend"):
        open_backend("broken:")


def test_check_backend_refuses_without_opening(tmp_path: Path) -> None:
    """check_backend finds what open_backend would refuse (options, values, a sqlite file in a
    missing or read-only directory) and opens nothing: no database file appears."""
    good = tmp_path / "store.db"
    check_backend(f"sqlite://{good}?synchronous=full")
    assert not good.exists()
    for url, message in [
        ("memory:x", "takes no location"),
        (f"sqlite://{good}?bogus=1", "unknown option(s) bogus"),
        (f"sqlite://{good}?writer=fast", "writer='fast'"),
        (f"sqlite://{tmp_path}/no/dir/x.db", "does not exist"),
        (f"sqlite://{tmp_path}", "is a directory"),
        ("http://127.0.0.1:port", "127.0.0.1:port"),
        ("http://127.0.0.1:1?timeout=0", "must be a positive number"),
        ("nosuch:x", "no backend for scheme"),
    ]:
        with pytest.raises(BackendURLError) as caught:
            check_backend(url)
        assert message in str(caught.value), url
    if os.geteuid() != 0:  # root may write anywhere
        read_only = tmp_path / "ro"
        read_only.mkdir(mode=0o500)
        with pytest.raises(BackendURLError, match="not writable"):
            check_backend(f"sqlite://{read_only}/x.db")


def test_a_third_party_factory_may_bring_its_check(third_party: ModuleType) -> None:
    """A factory's ``check`` attribute is what check_backend runs for its scheme; a factory
    without one is checked for its scheme only."""
    check_backend("thirdparty:fine")
    with pytest.raises(BackendURLError, match="bad is bad"):
        check_backend("thirdparty:x?bad=1")
    assert [url.text for url in third_party.checked_urls] == [
        "thirdparty:fine",
        "thirdparty:x?bad=1",
    ]
    assert third_party.received_urls == []
    check_backend("broken:anything")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:s3cr:et@db.lan:5432/nav?sslmode=require",
         "postgresql://app:***@db.lan:5432/nav?sslmode=require"),
        ("postgres://app@db.lan/nav", "postgres://app@db.lan/nav"),
        ("sqlite:///var/lib/navistore/store.db", "sqlite:///var/lib/navistore/store.db"),
        ("memory:", "memory:"),
    ],
)  # fmt: skip
def test_a_password_in_a_backend_url_is_never_displayed(url: str, shown: str) -> None:
    """What the node logs of its backend URL keeps everything but the password."""
    assert display_url(url) == shown

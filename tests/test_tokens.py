"""The tokens file and callers (navistore.tokens): parsing, refusals with their line, lookup."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from navistore.tokens import (
    Caller,
    TokenFileError,
    load_tokens,
    parse_permissions,
    parse_tokens,
)

SECRET = "s3cret-for-deploy-0001"
OTHER = "s3cret-for-ops-000002"

GOOD = f"""
# who may do what
[[token]]
name = "deploy"
secret = "{SECRET}"
allow = ["read", "write"]
prefixes = ["/app/", "/app/db/", "/cfg/"]

[[token]]
name = "ops"
sha256 = "{hashlib.sha256(OTHER.encode()).hexdigest()}"
allow = ["read", "admin"]
"""


def test_a_good_file_gives_tokens_found_by_their_secret() -> None:
    """Each token is found by its secret (given in clear or as its SHA-256), with its
    permissions and prefixes (nested ones folded into the wider); an unknown secret is None."""
    tokens = parse_tokens(GOOD, "tokens.toml")
    deploy = tokens.find(SECRET)
    ops = tokens.find(OTHER)
    assert deploy is not None and ops is not None
    assert (deploy.name, deploy.allow, deploy.prefixes) == (
        "deploy",
        frozenset({"read", "write"}),
        ("/app/", "/cfg/"),
    )
    assert (ops.name, ops.allow, ops.prefixes) == ("ops", frozenset({"read", "admin"}), ("/",))
    assert tokens.find("not-a-secret-at-all") is None
    assert tokens.find(SECRET[:-1]) is None
    assert SECRET not in repr(tokens)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('[[token]]\nname = "x"\nsecret = "short"\nallow = ["read"]\n', 3, "at least 16"),
        (f'[[token]]\nname = "x"\nsecret = "{SECRET}"\nallow = ["red"]\n', 4, "red"),
        (f'[[token]]\nname = "x"\nsecret = "{SECRET}"\n', 1, "allow"),
        (
            f'\n\n[[token]]\nname = "x"\nsecret = "{SECRET}"\nsha256 = "ab"\nallow = ["read"]',
            3,
            "exactly one",
        ),
        ('[[token]]\nname = "x"\nsha256 = "xyz"\nallow = ["read"]\n', 3, "64 hexadecimal"),
        (
            f'[[token]]\nname = "x"\nsecret = "{SECRET}"\nallow = ["read"]\nprefixes = ["/app"]\n',
            5,
            "must end with '/'",
        ),
        (
            f'[[token]]\nname = "x"\nsecret = "{SECRET}"\nallow = ["read"]\nprefixes = ["/a//"]\n',
            5,
            "empty",
        ),
        (
            f'[[token]]\nname = "x"\nsecret = "{SECRET}"\nallow = ["read"]\ncolour = "red"\n',
            5,
            "unknown field",
        ),
        (
            f'[[token]]\nname = "x"\nsecret = "{SECRET}"\nallow = ["read"]\n'
            f'[[token]]\nname = "x"\nsecret = "{OTHER}"\nallow = ["read"]\n',
            6,
            "named twice",
        ),
        (
            f'[[token]]\nname = "x"\nsecret = "{SECRET}"\nallow = ["read"]\n'
            f'[[token]]\nname = "y"\nsecret = "{SECRET}"\nallow = ["read"]\n',
            5,
            "same secret",
        ),
        ('[[token]\nname = "x"\n', 1, "not valid TOML"),
        ("\n\n[server]\nport = 1\n", 1, "unknown table"),
    ],
)
def test_a_bad_file_is_refused_naming_the_line(text: str, line: int, message: str) -> None:
    """A fault anywhere refuses the whole file with ``<file>:<line>: <what>``."""
    with pytest.raises(TokenFileError) as refused:
        parse_tokens(text, "tokens.toml")
    assert str(refused.value).startswith(f"tokens.toml:{line}: "), str(refused.value)
    assert message in str(refused.value)


def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    """A missing file is a TokenFileError naming it, as is a malformed one read from disk."""
    with pytest.raises(TokenFileError, match="cannot be read"):
        load_tokens(tmp_path / "nope.toml")
    path = tmp_path / "tokens.toml"
    path.write_text(GOOD.replace('"write"', '"wrote"'))
    with pytest.raises(TokenFileError, match=rf"{path}:6: .*wrote"):
        load_tokens(path)


def test_permissions_parse_from_text_or_lists() -> None:
    """``read,write`` and lists give permission sets; ``none`` and empty give none; an unknown
    name is refused naming it."""
    assert parse_permissions("read, Write") == {"read", "write"}
    assert parse_permissions("none") == frozenset() == parse_permissions("")
    assert parse_permissions(["peer"]) == {"peer"}
    with pytest.raises(ValueError, match="rwx"):
        parse_permissions("read,rwx")


@pytest.mark.parametrize(
    ("prefix", "visible"),
    [
        ("/", ("/app/", "/cfg/")),
        ("/app/", ("/app/",)),
        ("/app/db/", ("/app/db/",)),
        ("/ap", ("/app/",)),
        ("/other/", ()),
    ],
)
def test_a_caller_sees_only_inside_its_prefixes(prefix: str, visible: tuple[str, ...]) -> None:
    """What a listing or feed of ``prefix`` shows a caller: the prefix itself when it lies inside
    the caller's, else the caller's prefixes inside it, else nothing."""
    caller = Caller("deploy", frozenset({"read"}), ("/app/", "/cfg/"))
    assert caller.visible(prefix) == visible
    assert caller.covers("/app/x") and not caller.covers("/apple") and not caller.covers("/")

"""Navistore: a replicated HTTP key/value store for configuration data, on Twisted."""

__version__ = "0.1.0.dev0"


def version_line() -> str:
    """What ``--version`` prints, for every command: Navistore's version, then Twisted's and
    the interpreter's (an operator's bug report wants all three)."""
    import platform

    import twisted

    python = f"{platform.python_implementation()} {platform.python_version()}"
    return f"Navistore {__version__} (Twisted {twisted.__version__}, {python})"

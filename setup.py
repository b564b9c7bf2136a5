"""Packaging for Navistore: a replicated HTTP key/value store on Twisted."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="navistore",
    version="0.1.0.dev0",
    description="A replicated HTTP key/value store for configuration data, on Twisted",
    long_description=(Path(__file__).parent / "README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    license="GPL-2.0-or-later",
    python_requires=">=3.9",
    packages=[*find_packages(include=["navistore", "navistore.*"]), "twisted.plugins"],
    package_data={"navistore": ["py.typed"], "navistore.web": ["ui/*.html", "ui/*.js", "ui/*.css"]},
    scripts=["bin/nhttpserver"],
    install_requires=[
        # Floors that install on CPython 3.11 and on PyPy 3.9 (whose newest Twisted is 26.4).
        "twisted>=23.10.0",
        "treq>=23.11.0",
        "zope.interface>=6.0",
        "attrs>=22.2.0",
        # The tokens file is TOML: tomllib from 3.11 on, its backport before.
        "tomli>=1.1.0; python_version < '3.11'",
        # /_metrics: the Prometheus text format, and the process collector (pure Python).
        "prometheus_client>=0.17.0",
        # navistore render: the templates (3.0 installs on PyPy 3.9 too).
        "Jinja2>=3.0",
        # cryptography (through treq -> twisted[tls]) has no PyPy 3.9 wheel after 43, and newer
        # ones need Rust to build: pin PyPy 3.9 to wheels. pip then picks Twisted 25.5 there.
        "cryptography<44; platform_python_implementation == 'PyPy' and python_version < '3.10'",
    ],
    extras_require={
        # What a backend author needs to run navistore.testing.BackendComplianceTests.
        "testing": ["pytest>=7.4", "pytest-twisted>=1.14.1"],
        "test": [
            "pytest>=7.4",
            "pytest-twisted>=1.14.1",
            "hypothesis>=6.80",
            "trustme>=1.0",
            "pytest-xdist>=3.0",
            "ruff>=0.5",
            "mypy>=1.8",
            "mypy-zope>=1.0.3",
            # tests/test_e2e_fuzz.py and bench/fuzz.py fuzz a node against its OpenAPI document.
            "schemathesis>=4.32; platform_python_implementation == 'CPython'",
            # tests/test_e2e_ui.py drives /_ui in Debian's headless chromium.
            "selenium>=4.10; platform_python_implementation == 'CPython'",
            "py-consul>=1.6",  # tests/test_consul_*.py: Consul's client against --compat consul
            # tests/test_postgresql_*.py run the postgresql backend against a real server.
            "psycopg[binary]>=3.1; platform_python_implementation == 'CPython'",
            "psycopg>=3.1; platform_python_implementation != 'CPython'",
        ],
        # --backend postgresql://...: psycopg 3 with its own libpq (binary wheels) on CPython;
        # PyPy has no binary wheel, and its pure-Python psycopg loads the system's libpq.
        "postgresql": [
            "psycopg[binary]>=3.1; platform_python_implementation == 'CPython'",
            "psycopg>=3.1; platform_python_implementation != 'CPython'",
        ],
    },
    entry_points={
        "console_scripts": ["navistore = navistore.scripts.client:main"],
        "navistore.backends": [],
    },
    classifiers=[
        "Framework :: Twisted",
        "License :: OSI Approved :: GNU General Public License v2 or later (GPLv2+)",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: Implementation :: CPython",
        "Programming Language :: Python :: Implementation :: PyPy",
    ],
)

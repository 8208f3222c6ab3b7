"""The SECRET_KEY check refuses every example value the repository ships (deploy/, configs/, docs, .env examples):
a copied example is long enough to pass a length check, and anyone who read the repository knows it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.app import check_settings
from server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# Where an operator copies a configuration from: the reference moved from the README to docs/*.md.
DOCS_PAGES = sorted(ROOT.glob("docs/*.md"))
SHIPPED = [*ROOT.glob("deploy/**/*"), *ROOT.glob("configs/*"), *ROOT.glob("docs/**/*"), *DOCS_PAGES,
           *ROOT.glob(".env*"), ROOT / "README.md", ROOT / "Dockerfile.cuda", ROOT / "Makefile"]
# SECRET_KEY=value, SECRET_KEY: value, secret-key: value, secret_key: value (shell substitutions are not values).
ASSIGNMENT = re.compile(r"(?i)secret[-_]key\s*[:=]\s*['\"]?(?!\$)([^\s'\"`]+)")
RANDOM = "Zq3x9T1vL0pB7yHc2mWd8sKf5gJr4nAe6uQi"


def shipped_secret_values() -> list[str]:
    values = {match.group(1) for path in SHIPPED if path.is_file()
              for match in ASSIGNMENT.finditer(path.read_text(errors="replace"))}
    return sorted(values)


def settings_with(secret: str) -> Settings:
    return Settings(auth_enabled=True, secret_key=secret)


def test_the_repository_ships_example_secrets() -> None:
    # The scan itself works: the k8s Secret's example and the docs' elision are found.
    assert {"replace-with-at-least-32-random-characters", "..."} <= set(shipped_secret_values())


def test_the_scan_reads_every_docs_page() -> None:
    # The pages an operator copies settings from (auth.md, operations.md) are among them.
    assert {ROOT / "docs/auth.md", ROOT / "docs/operations.md"} <= set(DOCS_PAGES) <= set(SHIPPED)


@pytest.mark.parametrize("secret", shipped_secret_values())
def test_every_shipped_example_secret_is_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="SECRET_KEY"):
        check_settings(settings_with(secret))


@pytest.mark.parametrize("secret", ["change-me", "CHANGE-ME-to-a-long-random-string-please-0123",
                                    "your-secret-key-here-0123456789abcdefghijkl", "short"])
def test_placeholders_and_short_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="SECRET_KEY"):
        check_settings(settings_with(secret))


def test_a_random_secret_is_accepted() -> None:
    check_settings(settings_with(RANDOM))

"""Settings precedence: YAML profile < .env < environment < explicit overrides."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from pydantic import ValidationError

from server.settings import load_settings


@pytest.fixture
def profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no stray .env from the checkout
    path = tmp_path / "profile.yaml"
    path.write_text("max_model_len: 1024\ntemperature: 0.5\nport: 9000\n")
    return path


def test_profile_overrides_defaults(profile: Path) -> None:
    settings = load_settings(profile)
    assert (settings.max_model_len, settings.temperature, settings.port) == (1024, 0.5, 9000)


def test_environment_overrides_profile(profile: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_MODEL_LEN", "4096")
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u@h/db")
    settings = load_settings(profile)
    assert settings.max_model_len == 4096
    assert settings.database_url == "postgresql+asyncpg://u@h/db"


def test_dotenv_overrides_profile_and_environment_overrides_dotenv(profile: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (profile.parent / ".env").write_text("TEMPERATURE=0.7\nPORT=9100\n")
    monkeypatch.setenv("PORT", "9200")
    settings = load_settings(profile)
    assert settings.temperature == 0.7
    assert settings.port == 9200


def test_explicit_overrides_win(profile: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9200")
    assert load_settings(profile, port=9300, host=None).port == 9300


def test_unknown_key_in_profile_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "typo.yaml"
    path.write_text("max_modle_len: 1024\n")
    with pytest.raises(ValidationError):
        load_settings(path)


def test_missing_profile_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "absent.yaml")


def test_shipped_profiles_load() -> None:
    root = Path(__file__).resolve().parents[2]
    assert load_settings(root / "configs/cpu.yaml").kv_cache_space_gib == 2
    assert load_settings(root / "configs/h100.yaml").gpu_memory_utilization == 0.9
    eight = load_settings(root / "configs/h100x8.yaml", secret_key=secrets.token_urlsafe(32))
    assert (eight.tensor_parallel_size, eight.api_processes) == (8, 4)
    from server.app import check_settings

    check_settings(eight)  # several API processes: its limits and reply streams are in Redis


@pytest.mark.parametrize(("shared", "missing"), [
    ({}, ["RATE_LIMIT_STORAGE", "REPLY_STREAMS_URL"]),
    ({"rate_limit_storage": "async+redis://127.0.0.1:6379"}, ["REPLY_STREAMS_URL"]),
    ({"reply_streams_url": "redis://127.0.0.1:6379/0"}, ["RATE_LIMIT_STORAGE"]),
])
def test_several_api_processes_need_shared_limits_and_streams(shared: dict[str, str], missing: list[str]) -> None:
    from server.app import check_settings

    with pytest.raises(ValueError, match="api_processes: 2 needs") as refused:
        check_settings(load_settings(None, api_processes=2, auth_enabled=False, **shared))
    named = [name for name in ("RATE_LIMIT_STORAGE", "REPLY_STREAMS_URL") if name in str(refused.value)]
    assert named == missing
    check_settings(load_settings(None, api_processes=2, auth_enabled=False,
                                 rate_limit_storage="async+redis://127.0.0.1:6379",
                                 reply_streams_url="redis://127.0.0.1:6379/0"))

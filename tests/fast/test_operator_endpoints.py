"""/metrics and /version with auth on: by default an admin's credentials or the metrics token, never anonymous nor
an ordinary user's; metrics_public: true opens them, as vllm serve has them."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from fast.conftest import SECRET
from fast.fake_engine import FakeEngine

METRICS_TOKEN = "metrics-token-Zq3x9T1vL0pB7yHc2mWd8sKf5gJr4n"
OPERATOR_PATHS = ("/metrics", "/version")


async def keys(http: httpx.AsyncClient) -> tuple[str, str]:
    """An admin's key and an ordinary user's, made with the admin CLI's functions in the app's database."""
    from server import admin

    settings = http._transport.app.state.services.settings  # type: ignore[attr-defined]
    found = []
    for username, is_admin in (("ops", True), ("ann", False)):
        await admin.create_user(settings, username, f"{username}-password-1", is_admin)
        found.append(await admin.create_key(settings, username, "k", None, {}))
    return found[0], found[1]


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_operator_endpoints_need_an_admin_or_the_metrics_token(
        client_for: Callable[..., httpx.AsyncClient], engine: FakeEngine) -> None:
    async with client_for(engine, auth_enabled=True, secret_key=SECRET, metrics_token=METRICS_TOKEN) as http:
        admin_key, user_key = await keys(http)
        for path in OPERATOR_PATHS:
            assert (await http.get(path)).status_code == 401, path
            assert (await http.get(path, headers=bearer("cf_not-a-key"))).status_code == 401, path
            assert (await http.get(path, headers=bearer(user_key))).status_code == 403, path
            assert (await http.get(path, headers=bearer(admin_key))).status_code == 200, path
            assert (await http.get(path, headers=bearer(METRICS_TOKEN))).status_code == 200, path
        assert (await http.get("/healthz")).status_code == 200  # the probes stay open


@pytest.mark.parametrize("settings", [{"auth_enabled": True, "secret_key": SECRET, "metrics_public": True},
                                      {"auth_enabled": False}])
async def test_metrics_public_or_auth_off_opens_them(client_for: Callable[..., httpx.AsyncClient],
                                                     engine: FakeEngine, settings: dict[str, object]) -> None:
    async with client_for(engine, **settings) as http:
        for path in OPERATOR_PATHS:
            assert (await http.get(path)).status_code == 200, path


def test_a_placeholder_metrics_token_is_refused() -> None:
    from server.app import check_settings
    from server.settings import Settings

    with pytest.raises(ValueError, match="METRICS_TOKEN"):
        check_settings(Settings(auth_enabled=True, secret_key=SECRET, metrics_token="replace-with-a-metrics-token"))

"""What the fuzz suites found, pinned one by one on the real app and a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.integration.fuzz_support import ADMIN_TOKEN, gateway


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway(redis_url) as gw:
        transport = httpx.ASGITransport(app=gw.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            yield c


@pytest.mark.parametrize("path", ["/admin/models/", "/v2/models/fraud_mlp/", "/v2/"])
async def test_a_trailing_slash_is_a_404_in_the_error_shape_not_an_empty_redirect(
    client: httpx.AsyncClient, path: str
) -> None:
    answer = await client.get(path, headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert answer.status_code == 404
    assert set(answer.json()) == {"error"}

"""End-to-end fixtures: one real 3-node cluster per test module (bringing one up takes ~10 s)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.e2e.cluster import E2ECluster


@pytest.fixture(scope="module")
async def e2e() -> AsyncIterator[E2ECluster]:
    cluster = E2ECluster()
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.close()

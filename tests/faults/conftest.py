"""Only the faults that apply to each shop (a database server to restart, one nats-server to lose) are run."""

from __future__ import annotations

import pytest

from tests.faults.test_cluster_faults import applies


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        params = getattr(item, "callspec", None) and item.callspec.params
        if params and "fault" in params and "shop" in params and not applies(params["shop"], params["fault"]):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep

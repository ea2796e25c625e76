"""Fixtures for the backend tests (helpers live in backend_helpers.py)."""

from __future__ import annotations

import pytest
from backend_helpers import FakeLabelStudio


@pytest.fixture
def fake_ls():
    server = FakeLabelStudio()
    yield server
    server.close()

"""The compressor's fixtures: users' models and data, built once per session."""

from __future__ import annotations

import pytest
from user_models import UserModels, build_user_models


@pytest.fixture(scope="session")
def user_models(tmp_path_factory: pytest.TempPathFactory) -> UserModels:
    return build_user_models(tmp_path_factory.mktemp("user-models"))

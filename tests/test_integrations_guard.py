"""Without their extras, the integrations say which pip command to run instead of an ImportError."""

from __future__ import annotations

import importlib
import importlib.util

import pytest

from pgstage import MissingDependency


@pytest.mark.parametrize(("module", "needs", "extra"), [("pgstage.integrations.dagster", "dagster", "dagster"),
                                                        ("pgstage.integrations.dbt", "dbt.cli", "dbt")])
def test_missing_extra_names_the_install_command(module: str, needs: str, extra: str) -> None:
    try:
        present = importlib.util.find_spec(needs) is not None
    except ModuleNotFoundError:
        present = False
    if present:
        pytest.skip(f"{needs} is installed")
    with pytest.raises(MissingDependency) as info:
        importlib.import_module(module)
    assert info.value.hint == f'pip install "pgstage[{extra}]"'
    assert info.value.exit_code == 2

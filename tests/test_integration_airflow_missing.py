"""Without Airflow installed, the integration says which extra to install (no ImportError traceback)."""

from __future__ import annotations

import importlib
import importlib.util

import pytest

from pgstage import MissingDependency


@pytest.mark.skipif(importlib.util.find_spec("airflow") is not None, reason="Airflow is installed here")
def test_importing_the_airflow_integration_names_the_extra() -> None:
    with pytest.raises(MissingDependency) as missing:
        importlib.import_module("pgstage.integrations.airflow")
    assert missing.value.message == "the Airflow integration needs Apache Airflow 3"
    assert missing.value.hint == 'pip install "pgstage[airflow]"' and missing.value.exit_code == 2


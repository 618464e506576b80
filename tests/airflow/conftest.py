"""Airflow in-process: a temporary AIRFLOW_HOME with a SQLite metadata database, no network.

Airflow reads its configuration when first imported, so the environment is set here, before
any test module imports it; where Airflow is not installed nothing is set and the test
modules skip themselves (`pytest.importorskip`). CI runs these tests in a virtual
environment of their own (.ci/run), because Airflow's pins clash with other extras.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SALES_DAG = REPO / "examples" / "sales" / "airflow" / "sales_daily.py"

if importlib.util.find_spec("airflow") is not None and "AIRFLOW_HOME" not in os.environ:
    _home = Path(tempfile.mkdtemp(prefix="pgstage-airflow-"))
    atexit.register(shutil.rmtree, _home, ignore_errors=True)
    os.environ.update({
        "AIRFLOW_HOME": str(_home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(SALES_DAG.parent),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    })


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[None]:
    """A fresh metadata database once per session (tables, no examples)."""
    from airflow.utils import db

    db.resetdb()
    yield

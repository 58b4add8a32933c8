"""Recipe parameters: a recipe's model-score thresholds can be set per selection (DuckDB variables)
and are recorded in the set's card; unset, the recipe keeps its own numbers."""

from __future__ import annotations

import pytest

from datakit.sets import SetError, recipe_sql, select
from datakit.workspace import Workspace
from tests.curation_fixtures import curated_manifest


def test_recipe_parameters_change_thresholds_and_are_recorded(tmp_path):
    ws = Workspace(tmp_path / "ws")
    curated_manifest(ws)
    default = select(ws, "hq", recipe_sql("hq"), recipe="@hq", kind="recipe")
    assert "params" not in default.card["recipe"]
    looser = select(ws, "hq", recipe_sql("hq"), recipe="@hq", kind="recipe", params={"hq_min_aesthetic": 4.5})
    assert looser.card["row_count"] > default.card["row_count"]
    assert looser.card["recipe"]["params"] == {"hq_min_aesthetic": 4.5}
    with pytest.raises(SetError, match="bad recipe parameter name"):
        select(ws, "hq", recipe_sql("hq"), params={"x; drop": 1})

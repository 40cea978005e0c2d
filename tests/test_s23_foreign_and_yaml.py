"""Two faults found while merging the 23rd round's work.

1. `--config` with a YAML syntax error put PyYAML's several-line text, naming the source as
   "<unicode string>", into the one `error:` line; a resume's damaged config.yaml already had the one-line
   form (yaml_safe.describe).
2. The run folder's recorded config source was read from every `checkpoints/step_*/config.yaml`, newest
   name first, so a `step_N.not-this-run-*` copy of another run (or a `.tmp-save` being written) decided
   which config file the run "was trained from" and refused the right one.
"""

from __future__ import annotations

import pytest
import yaml

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.config import load_yaml
from ngpt_ds.train import config_identity
from ngpt_ds.train.manifest import COMPLETE


def test_a_config_with_a_tab_is_named_on_one_line_by_line_and_column(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n\tn_layer: 2\n", encoding="utf-8")
    with pytest.raises(NgptConfigError) as err:
        load_yaml(path)
    assert str(err.value) == (
        f"{path}: not valid YAML: line 2, column 1: found character '\\t' that cannot start any token; "
        "YAML indents with spaces, not tabs"
    )


def _step(checkpoints, name, source, complete=True):
    folder = checkpoints / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"config_source": source}), encoding="utf-8")
    if complete:
        (folder / COMPLETE).write_text("{}", encoding="utf-8")


def test_the_recorded_config_source_comes_from_this_runs_step_folders_only(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    _step(checkpoints, "step_00000010", "configs/mine.yaml")
    _step(checkpoints, "step_00000020.not-this-run-20261204T040000Z", "configs/theirs.yaml")
    _step(checkpoints, "step_00000030.tmp-save", "configs/half.yaml", complete=False)
    assert config_identity._recorded_config_source(tmp_path / "run") == ("configs/mine.yaml", None)
    _step(checkpoints, "step_00000040", "configs/later.yaml", complete=False)  # cut short by a kill: still this run
    assert config_identity._recorded_config_source(tmp_path / "run") == ("configs/later.yaml", None)

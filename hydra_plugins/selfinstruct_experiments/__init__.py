"""Puts the repository's experiments/ folder on Hydra's config search path, so that
`python run.py -m +experiment=NAME` finds experiments/experiment/NAME.yaml from any working
directory.

Hydra discovers plugins in the `hydra_plugins` namespace package on sys.path. This folder sits next
to run.py, whose directory Python puts on sys.path, and pytest adds the repository root too
(pyproject.toml: pythonpath). `hydra_plugins/` must stay without an __init__.py: it is a namespace
package shared with the installed launchers and sweepers (joblib, submitit, optuna).

A `hydra.searchpath` entry in conf/config.yaml cannot do this: Hydra reads it before any
interpolation is resolved, so it can only name a path relative to the current directory or an
absolute one.
"""

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"


class SelfInstructExperimentsSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        # After conf/ (the main config wins on a name clash), before Hydra's structured schemas.
        search_path.append(provider="selfinstruct-experiments", path=f"file://{EXPERIMENTS_DIR}")

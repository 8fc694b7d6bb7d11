"""selfinstruct: SELF-INSTRUCT data generation. `python run.py --help` lists the config groups."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import selfinstruct.config  # noqa: F401  (registers the config schemas)
from selfinstruct.secrets import take_key_from_argv

# Launchers that start fresh interpreters (submitit, locally or on SLURM) inherit this environment;
# with the repository on PYTHONPATH their jobs import selfinstruct from any working directory.
_REPO = str(Path(__file__).resolve().parent)
if _REPO not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_REPO, os.environ.get("PYTHONPATH")]))


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from selfinstruct.errors import ConfigError
    from selfinstruct.failures import exit_cleanly
    from selfinstruct.pipeline import run
    from selfinstruct.secrets import protect_run

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    sweep_dir = Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None
    protect_run(cfg, run_dir, sweep_dir)  # masks the API key in logs and in Hydra's .hydra/*.yaml
    # A single run ends an operational failure with one line; a sweep lets the launcher report
    # the failed job and go on.
    with exit_cleanly(enabled=hc.mode == RunMode.RUN):
        try:
            stats = run(cfg, run_dir)
        finally:
            protect_run(cfg, run_dir, sweep_dir)
        # Sweepers (e.g. Optuna) optimise the value returned here.
        if not cfg.optimized_metric:
            return None
        if cfg.optimized_metric not in stats:
            raise ConfigError(f"config key `optimized_metric`: {cfg.optimized_metric!r} is not a statistic "
                              f"of this run (stats.json in {run_dir}); stages run: {list(cfg.stages)}")
        return stats[cfg.optimized_metric]


if __name__ == "__main__":
    # The key must never reach Hydra, which writes the command line into the run dir.
    sys.argv[:] = take_key_from_argv(sys.argv)
    if "-m" not in sys.argv[1:] and "--multirun" not in sys.argv[1:]:
        from selfinstruct.failures import preflight

        preflight(sys.argv[1:])
    main()

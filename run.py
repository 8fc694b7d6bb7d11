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
    import logging
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from selfinstruct.config import ConfigError
    from selfinstruct.files import DataError
    from selfinstruct.pipeline import run
    from selfinstruct.secrets import protect_run

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    sweep_dir = Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None
    protect_run(cfg, run_dir, sweep_dir)  # masks the API key in logs and in Hydra's .hydra/*.yaml
    try:
        stats = run(cfg, run_dir)
    except (ConfigError, DataError) as e:
        logging.getLogger("selfinstruct").error("%s", e)
        if hc.mode == RunMode.RUN:  # a clear message instead of a traceback
            raise SystemExit(f"error: {e}") from None
        raise
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
    main()

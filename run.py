"""selfinstruct: SELF-INSTRUCT data generation. `python run.py --help` lists the config groups."""

import hydra
from omegaconf import DictConfig

import selfinstruct.config  # noqa: F401  (registers the config schemas)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig

    from selfinstruct.pipeline import run

    stats = run(cfg, HydraConfig.get().runtime.output_dir)
    # Sweepers (e.g. Optuna) optimise the value returned here.
    return stats.get(cfg.optimized_metric) if cfg.optimized_metric else None


if __name__ == "__main__":
    main()

"""The Dagster ``Definitions`` of the aes pipeline, shaped by the active profile ($AES_PROFILE).

The profile is resolved ONCE here into a frozen ``AesConfig``; partitions, launchpad defaults,
code versions and resources all come from that one object.
"""

from __future__ import annotations

import functools
import logging
import warnings

import dagster as dg

from aes_assets.assets.data import data_assets
from aes_assets.assets.ensemble import ENSEMBLE_CHECKS, ensemble_assets
from aes_assets.assets.export import export_assets, serving_assets
from aes_assets.assets.flags import FLAG_CHECKS, flag_assets
from aes_assets.assets.serving import submission_asset
from aes_assets.assets.student import student_assets
from aes_assets.assets.training import training_assets
from aes_assets.checks import DATA_CHECKS
from aes_assets.jobs import PIPELINE_JOB, build_jobs
from aes_assets.progress import progress_logger
from aes_assets.resources import build_resources
from aes_assets.schedules import (
    build_new_ensemble_sensor,
    build_rescore_schedule,
    rescore_inbox_history_job,
)
from aes_assets.sensors import build_inbox_sensor, score_inbox_file_job
from aes_core.config import AesConfig, load_config
from aes_core.tracking import unmet_requirements
from aes_resources.settings import active_profile


def build_definitions(profile: str | AesConfig | None = None) -> dg.Definitions:
    cfg = profile if isinstance(profile, AesConfig) else load_config(profile or active_profile())
    assets = [*data_assets(cfg), *flag_assets(cfg), *training_assets(cfg),
              *ensemble_assets(cfg)]
    for bb in cfg.backbones:  # per-backbone export into the serving bundle
        assets += export_assets(cfg, bb.name)
    assets += [*serving_assets(cfg), *student_assets(cfg), submission_asset(cfg)]
    return dg.Definitions(
        assets=assets,
        asset_checks=[*DATA_CHECKS, *ENSEMBLE_CHECKS, *FLAG_CHECKS],
        jobs=[*build_jobs(cfg, assets), score_inbox_file_job, rescore_inbox_history_job],
        sensors=[build_inbox_sensor(cfg), build_new_ensemble_sensor(cfg)],
        schedules=[build_rescore_schedule(cfg)],
        resources=build_resources(cfg),
        loggers={"console": dg.colored_console_logger, "progress": progress_logger},
    )


def warn_unmet_requirements() -> list[str]:
    """Say once, when the code location loads, which installed packages are outside the
    project's ranges (they run, but on paths nobody tested)."""
    unmet = unmet_requirements()
    if unmet:
        logging.getLogger(__name__).warning(
            "installed packages outside pyproject.toml's ranges: %s; `pip install -e .` "
            "(or requirements.lock) installs tested versions", "; ".join(unmet))
    return unmet


warnings.filterwarnings("ignore", category=dg.BetaWarning)  # backfill_policy, sensor owners
warn_unmet_requirements()
defs = build_definitions()


@functools.cache
def _definitions_for(profile: str) -> dg.Definitions:
    return build_definitions(profile)


def pipeline_job(profile: str | None = None, name: str = PIPELINE_JOB) -> dg.JobDefinition:
    """The whole-graph job ``name`` of ``profile`` (default: the active one, $AES_PROFILE),
    reconstructable in every step process of a run (``pipeline``, or ``pipeline_<backbones>``
    where backbones train different heads).

    The driver passes the profile explicitly: a forkserver's step processes inherit the
    environment of the process that started the server, not of the current run.
    """
    return _definitions_for(profile or active_profile()).resolve_job_def(name)

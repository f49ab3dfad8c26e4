"""`predict.py` / `amg-predict`: check the config, build the parts from it, predict, summarise."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException, OverrideParseException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from amg_lightning.core.embedding_cache import EmbeddingCache
from amg_lightning.core.models import CheckpointError
from amg_lightning.data.datamodule import HandOverError
from amg_lightning.results.run_folder import shard_paths, update_summary
from amg_lightning.results.shards import shard_samples
from amg_lightning.run.checkpoints import resolve_checkpoint
from amg_lightning.run.config import (
    CONFIG_DIR,
    ConfigError,
    check_config,
    generator_settings,
    with_flags_parsed,
)
from amg_lightning.run.folder import PreparedFolder, prepare_output_dir, run_identity
from amg_lightning.run.help_text import yaml_value
from amg_lightning.run.hydra_dirs import forget_run_dir
from amg_lightning.run.progress import ThroughputProgressBar
from amg_lightning.run.ranks import EndWhenARankDies
from amg_lightning.run.stopping import RunInterrupted, StopOnSignal
from amg_lightning.run.writer import RleShardWriter
from amg_lightning.utils.allocator import keep_freed_memory
from amg_lightning.utils.logging import get_logger

__all__ = ["CONFIG_DIR", "main", "predict"]
log = get_logger(__name__)
OmegaConf.register_new_resolver("amg_yaml", yaml_value, replace=True)  # for --help


# The user's HYDRA_FULL_ERROR, before main() sets it so that Hydra raises its own errors to us.
_FULL_ERROR = "HYDRA_FULL_ERROR"
_users_full_error: str | None = None


def main() -> None:
    """Entry point; Hydra's own errors (an unknown key, a bad override) end with one line and exit
    code 2, like every other mistake in the config."""
    global _users_full_error
    _users_full_error = os.environ.get(_FULL_ERROR)
    os.environ[_FULL_ERROR] = "1"  # otherwise Hydra prints several lines and exits 1 itself
    try:
        _main()
    except HydraException as err:
        if _users_full_error == "1":
            raise
        # The first line of each: the rest suggests `+KEY=`, which check_config refuses anyway.
        lines = [str(err).splitlines()[0]]
        if isinstance(err, OverrideParseException):
            lines.insert(0, f"cannot parse override '{err.override}':")
        if err.__cause__ is not None:
            lines.append(str(err.__cause__).splitlines()[0])
        log.error(f"error: {' '.join(lines)}")
        sys.exit(2)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def _main(cfg: DictConfig) -> None:
    """The run, once Hydra has composed the config; a mistake in the config or inputs ends with
    one line and exit code 2.

    A run stopped by SIGTERM, SIGINT or SIGUSR2 ends with one line and 128 + the signal's
    number; under submitit, whose handler then requeues the job, as that handler ends it.
    """
    # Batches stay on the host on purpose (the generator moves the crops' encoder inputs),
    # and the writer needs no batch indices: Lightning's warnings about both would only confuse.
    _restore_full_error()
    warnings.filterwarnings("ignore", message=".*transfer_batch_to_device.*")
    warnings.filterwarnings("ignore", message=".*infer the batch indices.*")
    warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")  # inside Lightning 2.6
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_drop_advertisements)
    try:
        check_config(cfg)
        if _sweep_job_needs_own_process(cfg):
            _run_in_own_process()
        else:
            predict(cfg)
    except (ConfigError, CheckpointError) as err:
        # One line, even where the cause (torch.load's, say) spans several.
        log.error(f"error: {' '.join(str(err).split())}")
        forget_run_dir()  # a refused command leaves nothing behind
        sys.exit(2)
    except RunInterrupted as stopped:
        if stopped.summary is not None:  # global rank 0
            handled = stopped.summary["images"] + stopped.summary["errors"]
            log.warning(f"interrupted after {handled} images; rerun with resume=true")
        stopped.pass_on()  # the shards are complete: now submitit may requeue the job
        sys.exit(stopped.exit_code)
    except TooManyErrors as failed:
        log.error(f"failed: {failed}")
        sys.exit(1)
    except Exception as err:
        if _users_full_error == "1":
            raise
        # One line for the scheduler's log; the shards written so far are complete.
        log.error(f"error: {_cause(err)}; {_images_written(cfg)}, resume=true continues")
        sys.exit(1)


class TooManyErrors(RuntimeError):
    """More of the run's images failed than `max_error_fraction` allows (summary written)."""


def _cause(err: BaseException) -> str:
    """What went wrong, in one line: a full disk and a dead worker by name."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return "output folder full"
    if isinstance(err, HandOverError):  # the worker's own message, after torch's traceback
        return str(err).strip().splitlines()[-1].partition(": ")[2]
    text = " ".join(str(err).split()) or type(err).__name__
    if "DataLoader worker" in text:
        return f"a data-loading worker died ({text})"
    return f"{type(err).__name__}: {text}"


def _images_written(cfg: DictConfig) -> str:
    """How many images the folder's complete shards hold, for the last line."""
    try:
        output_dir = Path(cfg.output_dir)
        count = sum(len(shard_samples(path)) for path in shard_paths(output_dir))
    except Exception:  # the line must come out, whatever state the folder is in
        return "the shards written are complete"
    return f"{count} images written"


def _restore_full_error() -> None:
    """Give child processes (DDP ranks, sweep jobs) the user's HYDRA_FULL_ERROR, not main()'s."""
    if _users_full_error is None:
        os.environ.pop(_FULL_ERROR, None)
    else:
        os.environ[_FULL_ERROR] = _users_full_error


def _drop_advertisements(record: logging.LogRecord) -> bool:
    """Lightning's start-up tips name products to install, not anything about this run."""
    return not record.getMessage().startswith("💡 Tip")


def predict(cfg: DictConfig) -> dict[str, Any] | None:
    """Runs the prediction; returns the summary on global rank 0 (None on other ranks).

    Raises RunInterrupted, after the summary is written, when a signal stopped the run.
    """
    cfg = with_flags_parsed(cfg)
    stopper = StopOnSignal()
    stopper.install()  # from the start: a signal while the model loads also ends cleanly
    try:
        return _predict(cfg, stopper)
    finally:
        stopper.restore()


def _predict(cfg: DictConfig, stopper: StopOnSignal) -> dict[str, Any] | None:
    if cfg.keep_freed_memory:
        keep_freed_memory()
    output_dir = Path(cfg.output_dir)
    try:
        datamodule = instantiate(cfg.data)  # resolves data.urls, once
    except InstantiationException as err:
        raise ConfigError(f"{err.__cause__}; make shards with amg-shards") from None
    checkpoint = resolve_checkpoint(cfg.model.model_type, cfg.model.checkpoint)
    identity = run_identity(cfg, checkpoint)
    folder = prepare_output_dir(
        output_dir, cfg.resume, identity, datamodule.shard_urls, cfg.resume_changed_shards
    )
    try:
        if folder.done:
            log.info(f"resuming: {len(folder.done)} images already done in {output_dir}")
        datamodule.skip_keys = folder.done
        model = _load_model(cfg, checkpoint)
        datamodule.prepare = model.crop_inputs  # crops cut and resized in the workers
        datamodule.auto_batch_size = model.images_per_batch
        folder.record_identity(identity)
        writer = RleShardWriter(
            str(output_dir),
            shard_size=cfg.shard_size,
            config=_recorded_config(cfg),
            interrupted=lambda: stopper.signum is not None,
        )
        rank_watch = EndWhenARankDies(lambda what: _report_dead_rank(cfg, folder, what))
        callbacks = [writer, stopper, rank_watch, ThroughputProgressBar()]
        trainer = instantiate(cfg.trainer, callbacks=callbacks)
        rank_watch.watch(trainer)
        try:
            trainer.predict(model, datamodule=datamodule, return_predictions=False)
        finally:
            rank_watch.stop()
        stopper.restore()  # the shards are final: a signal from here on ends the process as usual
        if not trainer.is_global_zero:
            if stopper.signum is not None:
                raise stopper.interruption(None)
            return None
        summary = _finish_summary(cfg, output_dir, folder, identity, model)
        if summary["interrupted"]:  # on any rank
            raise stopper.interruption(summary)
        return summary
    finally:
        folder.release()


def _report_dead_rank(cfg: DictConfig, folder: PreparedFolder, what: str) -> None:
    """The last line when another DDP rank died (run/ranks.py); the lock is released.

    Said by whichever rank survives (`log` speaks from rank 0 only, which may be the dead one).
    """
    log.logger.error(f"error: {what}; {_images_written(cfg)}, resume=true continues")
    folder.release()


def _load_model(cfg: DictConfig, checkpoint: Path | None) -> Any:
    try:
        return instantiate(
            cfg.model,
            checkpoint=str(checkpoint) if checkpoint else None,
            settings=generator_settings(cfg),
            fast=cfg.fast,
            embedding_cache_dir=cfg.embedding_cache.dir,
            embedding_cache_gb=cfg.embedding_cache.max_gb,
        )
    except InstantiationException as err:
        # Hydra wraps what the constructor raised; a bad checkpoint is the user's to fix.
        if isinstance(err.__cause__, CheckpointError):
            raise err.__cause__ from None
        raise


def _recorded_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config for summary.json, without Hydra's own node (which is there when
    the config comes from compose(return_hydra_config=True))."""
    recorded = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    return OmegaConf.to_container(recorded, resolve=True)


def _finish_summary(
    cfg: DictConfig,
    output_dir: Path,
    folder: PreparedFolder,
    identity: dict[str, Any],
    model: Any,
) -> dict[str, Any]:
    """Adds what a resumed run skipped, what made the masks (`run`), encoder time saved and
    evaluation scores, and logs the one-line summary. The counts are this run's;
    `images_already_done` were in complete shards.
    """
    fields: dict[str, Any] = {"images_already_done": len(folder.done), "run": identity}
    cache: EmbeddingCache | None = model.generator.embedding_cache
    if cache is not None:  # rank 0's own lookups: the sweep report's time saved
        fields["encoder_seconds_saved"] = round(cache.seconds_saved, 3)
    summary = update_summary(output_dir, **fields)
    if summary["interrupted"]:
        return summary
    if cfg.eval.gt:
        from amg_lightning.results.evaluation import evaluate_output_dir

        summary = update_summary(output_dir, eval=evaluate_output_dir(output_dir, cfg.eval.gt))
    scores = "".join(
        f", {k} {v:.3f}" for k, v in summary.get("eval", {}).items() if k in ("AR@100", "AP")
    )
    log.info(
        f"done: {summary['images']} images, {summary['masks']} masks, {summary['errors']} errors "
        f"in {summary['wall_seconds']:.1f} s ({summary['images_per_second']:.2f} images/s{scores}) "
        f"-> {output_dir}"
    )
    _check_errors(summary, cfg.max_error_fraction, output_dir)
    return summary


def _check_errors(summary: dict[str, Any], max_fraction: float, output_dir: Path) -> None:
    """Raises TooManyErrors when more than `max_fraction` of this run's images failed."""
    handled = summary["images"] + summary["errors"]
    if handled and summary["errors"] / handled > max_fraction:
        reason = (
            f"{summary['errors']} of {handled} images could not be segmented, more than "
            f"max_error_fraction={max_fraction}: see {output_dir}/errors-r*.jsonl"
        )
        update_summary(output_dir, failed=reason)
        raise TooManyErrors(reason)


def _sweep_job_needs_own_process(cfg: DictConfig) -> bool:
    """True for a multirun job whose DDP processes Lightning would start.

    Lightning restarts the running program for each extra rank with its command line, which
    in a multirun would run the whole sweep again, into the wrong directory (or, under
    submitit, submitit's job runner). Such a job runs instead as a single run of its own, in
    its job directory, where the restart is right. Ranks that torchrun or srun started (a
    submitit_slurm job with tasks_per_node > 1) are each a rank already.
    """
    launched_externally = "LOCAL_RANK" in os.environ or SLURMEnvironment.detect()
    is_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    return is_sweep and "ddp" in str(cfg.trainer.strategy) and not launched_externally


def _run_in_own_process() -> None:
    """The job as a single run of this module in a child process, which gets the stop
    signals this process receives; ends as the child did."""
    hydra_cfg = HydraConfig.get()
    job_dir = hydra_cfg.runtime.output_dir
    # __spec__.name: this module by its import name, also when it runs as `python -m`.
    command = [sys.executable, "-m", __spec__.name, *hydra_cfg.overrides.task]
    command += [f'hydra.run.dir="{job_dir}"', "hydra.output_subdir=null"]
    stopper = StopOnSignal()
    stopper.install()
    try:
        with subprocess.Popen(command, cwd=hydra.utils.get_original_cwd()) as child:
            stopper.forward_to(child.send_signal)
            returncode = child.wait()
    finally:
        stopper.restore()
    if stopper.signum is not None:
        raise stopper.interruption(None)  # the child has said how far it got
    if returncode != 0:
        # The job's own process has said what went wrong; end the same way, not with a traceback.
        sys.exit(returncode)


if __name__ == "__main__":
    main()

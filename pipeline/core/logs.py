"""What the jobs print: the project's own lines at the chosen level, third-party noise down, each warning once.

Jobs call `configure(level)` right after parsing (`--log-level debug|info|warning|error`, `--quiet` =
warning); the level travels to Ray workers as ADEPT_LOG_LEVEL (ADEPT_* variables follow the job, see
`pipeline.core.config.driver_env`), where `configure_worker_logging()` applies the same rules.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from pipeline.core.ray_compat import train_file_loggers

LEVEL_ENV = "ADEPT_LOG_LEVEL"
LEVELS = ("debug", "info", "warning", "error")
# Libraries whose INFO/WARNING chatter drowns the job's own lines; their errors still show.
NOISY = ("datasets", "transformers", "deepspeed", "DeepSpeed", "torch.distributed", "filelock", "urllib3",
         "mlflow.tracking", "mlflow.store", "mlflow.system_metrics", "alembic", "huggingface_hub")


def add_arguments(parser) -> None:
    """`--log-level` and `--quiet` for a job's argparse parser."""
    parser.add_argument("--log-level", choices=LEVELS, default=None, help="how much to print (default: info)")
    parser.add_argument("--quiet", action="store_true", help="warnings, errors and the final summary only")


def level_from_args(args) -> str:
    return "warning" if getattr(args, "quiet", False) else (getattr(args, "log_level", None) or "info")


def train_log_level() -> str:
    """Ray Train's own level (its RunConfig LoggingConfig, used in the controller and the workers): its
    warnings and errors, everything only at --log-level debug."""
    return "DEBUG" if os.environ.get(LEVEL_ENV, "info") == "debug" else "WARNING"


def configure(level: str = "info") -> None:
    """The driver: `[adept]` lines to stdout at `level`; libraries quieter; each distinct warning once."""
    os.environ[LEVEL_ENV] = level
    logger = logging.getLogger("adept")
    if not any(isinstance(h, _CurrentStdout) for h in logger.handlers):
        handler = _CurrentStdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level.upper())
    _quiet_libraries(level)


class _CurrentStdout(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is when a line is logged (tests and notebooks swap it)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler assigns it in __init__; the property decides
        pass


def configure_worker_logging() -> None:
    """In a Ray worker: the driver's level (ADEPT_LOG_LEVEL); Ray forwards the worker's lines to the driver."""
    level = os.environ.get(LEVEL_ENV, "info")
    logging.getLogger("adept").setLevel(level.upper())
    _quiet_libraries(level)


def _quiet_libraries(level: str) -> None:
    threshold = logging.DEBUG if level == "debug" else logging.ERROR
    for name in NOISY:
        logging.getLogger(name).setLevel(threshold)
    # Ray Train's workers announce every report and checkpoint at INFO (the metrics dict in full); the report
    # line comes from a logger named by its file's path, not by its module.
    train_level = logging.DEBUG if level == "debug" else logging.WARNING
    logging.getLogger("ray.train").setLevel(train_level)  # and train_log_level() in Ray Train's RunConfig
    for path in train_file_loggers():
        logging.getLogger(path).setLevel(train_level)
    if level != "debug":
        warnings.simplefilter("once")  # each distinct warning once per process, not once per call site
        # Libraries' deprecation notices (SQLAlchemy in MLflow, pandas 4, torch.distributed renames) say
        # nothing a user of the job can act on, and every Ray worker process would print its own copy.
        # ResourceWarning and ImportWarning stay hidden as in Python's own defaults ("once" would show them:
        # an unclosed file or a still-running subprocess at exit of a library's process is not the user's to fix).
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning, ResourceWarning,
                         ImportWarning):
            warnings.filterwarnings("ignore", category=category)
        # Variables, not calls: importing transformers and datasets here cost the job's first `error:` line
        # seconds (minutes on a loaded machine); each library reads its variable when it is imported.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DATASETS_VERBOSITY", "error")  # datasets sets its logger's level on import
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # "Downloading artifacts: 50%|█..."
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bars
        _quiet_loaded_libraries()


def _quiet_loaded_libraries() -> None:
    """transformers and datasets, if already imported (a worker, a notebook): their variables were read then."""
    hf_logging = getattr(sys.modules.get("transformers.utils.logging"), "disable_progress_bar", None)
    if hf_logging is not None:
        hf_logging()
    datasets = sys.modules.get("datasets")
    if datasets is not None and hasattr(datasets, "disable_progress_bars"):
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()

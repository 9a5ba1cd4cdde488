"""Third-party output a ModelMill user cannot act on, silenced at its source with each library's own switch.

The ML libraries print progress bars ("Loading weights" from transformers, "Truncating train dataset"
from TRL's dataset preparation through datasets.map) and deprecation notices about calls they make into
each other. None of it is about the user's job: the job's events, `jobs watch` and the demo's own lines
are the progress. ModelMill's own output (print, its `modelmill.*` loggers) is untouched, and so is any
warning not listed here: a new third-party warning shows until someone decides it is noise.

Environment variables rather than calls, so that the child processes a command starts (the demo's
server, `serve --worker-process`'s worker, training ranks) inherit them; setdefault, so that a user who
sets one keeps their value. `modelmill --verbose ...` shows all of it, in the processes it starts too.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

QUIET_ENV = {
    # huggingface_hub's switch; transformers' own bars ("Loading weights") follow it (read at import).
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    # datasets.map's bars: TRL's "Tokenizing/Truncating train dataset".
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    # transformers' advisory warnings (logger.warning_advice) and its and datasets' log level: errors only.
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DATASETS_VERBOSITY": "error",
}

# (start of the message, category) of warnings that third-party code raises about third-party calls,
# matched by message, never a whole category: transformers deprecates the alias TRL's trainers still read
# (is_gradient_checkpointing), and the field TRL's GRPOConfig still sets by default (gradient_checkpointing).
KNOWN_WARNINGS: list[tuple[str, type[Warning]]] = [
    ("`is_gradient_checkpointing` is deprecated", FutureWarning),
    ("`gradient_checkpointing` is deprecated", FutureWarning),
]

# Third-party loggers that are not under transformers' or datasets' own verbosity switch.
QUIET_LOGGERS = ("trl",)

# --verbose: each library's default, set explicitly so that the processes the command starts (which
# call quiet_third_party_output themselves) keep it too. An empty value counts as unset for both
# TRANSFORMERS_NO_ADVISORY_WARNINGS and PYTHONWARNINGS.
VERBOSE_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "0", "HF_DATASETS_DISABLE_PROGRESS_BARS": "0",
               "TRANSFORMERS_NO_ADVISORY_WARNINGS": "", "TRANSFORMERS_VERBOSITY": "warning",
               "DATASETS_VERBOSITY": "warning", "PYTHONWARNINGS": ""}


def warnings_option() -> str:
    """KNOWN_WARNINGS as a PYTHONWARNINGS value (each message literal, matched at its start)."""
    return ",".join(f"ignore:{message}:{category.__name__}" for message, category in KNOWN_WARNINGS)


def quiet_third_party_output(verbose: bool = False) -> None:
    """Silence the third-party output above in this process and the processes it starts; with verbose,
    show it in both."""
    if verbose:
        for name, value in VERBOSE_ENV.items():
            os.environ.setdefault(name, value)
        return
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    if "PYTHONWARNINGS" not in os.environ:  # else inherited (already applied at start-up) or the user's own
        os.environ["PYTHONWARNINGS"] = warnings_option()
        for message, category in KNOWN_WARNINGS:  # this process: PYTHONWARNINGS is read only at start-up
            warnings.filterwarnings("ignore", message=re.escape(message), category=category)
    if os.environ["TRANSFORMERS_VERBOSITY"] == QUIET_ENV["TRANSFORMERS_VERBOSITY"]:  # not a --verbose parent's
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)

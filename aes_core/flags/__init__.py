"""Gaming and off-topic flags at scoring time (see ``flagger`` for the API)."""

from aes_core.flags.flagger import (
    FLAG_NAMES,
    GAMING_FLAGS,
    INFO_FLAGS,
    EssayFlagger,
    EssayFlags,
    Flag,
    apply_flag_policy,
    fit_flagger,
    flags_frame,
)

__all__ = ["FLAG_NAMES", "GAMING_FLAGS", "INFO_FLAGS", "EssayFlagger", "EssayFlags", "Flag",
           "apply_flag_policy", "fit_flagger", "flags_frame"]

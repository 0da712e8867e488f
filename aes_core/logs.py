"""Quiet library chatter; explain in one line of ours what the libraries would warn about.

Left alone, every Lightning ``Trainer`` prints hardware banners ("GPU available: ...", "TPU
available: ..."), advertising tips ("💡 Tip: ... litlogger / litmodels") and notes about its own
defaults; transformers draws a progress bar for every weight load and prints a multi-line
"LOAD REPORT" (plus "This checkpoint seem corrupted") whenever a backbone is loaded with fewer
layers than it was saved with, or without the masked-LM head a sentence-embedding checkpoint
never had. None of it is about the essays or the run's configuration.

:func:`quiet_libraries` filters exactly those messages (by logger name and text) and one
deprecation warning that Lightning triggers inside torch; every other warning or error still
shows. :func:`explain_loading` replaces the load report: one INFO line per known cause, once per
process, and a WARNING of ours for any other missing or unexpected weight.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

# The loggers these messages are emitted on (Lightning's rank-zero helpers; transformers'
# modeling utils, which also passes its logger to the load report).
_LIGHTNING_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "pytorch_lightning.utilities.rank_zero",
)
_LIGHTNING_NOISE = re.compile(
    r"^(GPU available: |TPU available: |HPU available: |💡 Tip: "
    r"|Trainer already configured with model summary callbacks"
    r"|Loading `\w+` to estimate number of stepping batches"
    r"|`Trainer\(val_check_interval=[^)]*\)` was configured so validation will run"
    r"|`Trainer\.fit` stopped: `max_(epochs|steps)=\d+` reached)"
)
_TRANSFORMERS_LOGGERS = ("transformers.modeling_utils", "transformers.utils.loading_report")
_TRANSFORMERS_NOISE = re.compile(r"LOAD REPORT|This checkpoint seem corrupted")
# (category, message regex): warnings raised inside a library about a library.
_WARNINGS = ((FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),)

_LAYER_KEY = re.compile(r"(?:^|\.)layers?\.(\d+)\.")
_SHOWN = 8  # keys named in our own warning before "... and N more"


class _DropMatching(logging.Filter):
    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


_FILTERS = {name: _DropMatching(_LIGHTNING_NOISE) for name in _LIGHTNING_LOGGERS}
_FILTERS.update({name: _DropMatching(_TRANSFORMERS_NOISE) for name in _TRANSFORMERS_LOGGERS})
_choice: bool | None = None  # the last explicit ``verbose``
_explained: set[tuple[str, str]] = set()


def quiet_libraries(verbose: bool | None = None) -> None:
    """Filter the libraries' chatter (``verbose=False``) or restore it (``verbose=True``).

    Library code calls it with no argument where it builds trainers and loads models: that
    quiets unless an entry point already chose, so an explicit ``verbose=True`` sticks.
    Idempotent and cheap; filters attach to the emitting loggers, so they hold whichever
    handler (Lightning's, the root's, Dagster's) prints the records.
    """
    global _choice
    if verbose is None:
        verbose = bool(_choice)
    else:
        _choice = verbose
    for name, f in _FILTERS.items():
        logger = logging.getLogger(name)
        if verbose:
            logger.removeFilter(f)
        elif f not in logger.filters:
            logger.addFilter(f)
    ours = {pattern for _, pattern in _WARNINGS}
    warnings.filters[:] = [w for w in warnings.filters
                           if getattr(w[1], "pattern", None) not in ours]
    if not verbose:
        for category, pattern in _WARNINGS:
            warnings.filterwarnings("ignore", message=pattern, category=category)
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    if verbose:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()


def _once(source: str, kind: str, level: int, msg: str) -> None:
    if (source, kind) not in _explained:
        _explained.add((source, kind))
        log.log(level, msg)


def _named(keys: list[str]) -> str:
    more = f" ... and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def explain_loading(model: Any, info: Mapping[str, Iterable[str]], source: str) -> None:
    """Log what ``from_pretrained(..., output_loading_info=True)`` reported, in our words.

    Explained (INFO, once per ``source``): checkpoint layers beyond the model's
    ``num_hidden_layers`` (a backbone truncated by ``backbones[].num_layers``) and, for a model
    with a task head (e.g. masked LM), head weights the checkpoint lacks (they start from a
    random init). Anything else missing or unexpected is a WARNING naming the keys.
    """
    n_layers = getattr(model.config, "num_hidden_layers", None)
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    has_head = getattr(model, "base_model", model) is not model
    missing, unexpected = sorted(info.get("missing_keys", ())), sorted(
        info.get("unexpected_keys", ()))

    def beyond_kept_layers(key: str) -> bool:
        m = _LAYER_KEY.search(key)
        return n_layers is not None and m is not None and int(m.group(1)) >= n_layers

    cut = [k for k in unexpected if beyond_kept_layers(k)]
    # a task model (e.g. BertForMaskedLM) has no pooler: the checkpoint's pooler goes unused
    unused = [k for k in unexpected if has_head and k not in cut
              and (k.startswith("pooler.") or k.startswith(prefix + "pooler."))]
    head = [k for k in missing if has_head and not k.startswith(prefix)]
    if cut:
        dropped = sorted({int(_LAYER_KEY.search(k).group(1)) for k in cut})
        _once(source, "layers", logging.INFO,
              f"{source}: using the first {n_layers} encoder layers (backbones[].num_layers); "
              f"the checkpoint's layers {dropped[0]}..{dropped[-1]} are not loaded")
    if head:
        heads = sorted({k.split(".")[0] for k in head})
        _once(source, "head", logging.INFO,
              f"{source}: no {type(model).__name__} head in the checkpoint ({len(head)} "
              f"weights under {', '.join(heads)}), so the head starts from random weights "
              f"(usual for sentence-embedding backbones)")
    if unused:
        log.debug("%s: %d pooler weights unused by %s", source, len(unused),
                  type(model).__name__)
    other_missing = [k for k in missing if k not in head]
    other_unexpected = [k for k in unexpected if k not in cut and k not in unused]
    if other_missing:
        log.warning("%s: %d weight(s) missing from the checkpoint, newly initialised: %s",
                    source, len(other_missing), _named(other_missing))
    if other_unexpected:
        log.warning("%s: %d weight(s) in the checkpoint that %s does not use: %s", source,
                    len(other_unexpected), type(model).__name__, _named(other_unexpected))

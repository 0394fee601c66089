"""The population's processor (tokenizer / image processor): found, checked for agreement, saved with exports.

Users hold populations saved with ``save_pretrained``: each member folder carries the tokenizer or image
processor it was trained with. star-merge processes raw data with the first anchor's processor (or
``--processor_name_or_path``), refuses a population whose members disagree, and writes the processor next to
every model it exports, so ``pipeline(task, model=folder)`` needs no extra argument.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from collections.abc import Sequence
from typing import Any

from .errors import UserError

__all__ = ["PROCESSOR_PATTERNS", "ProcessorError", "copy_processor_files", "has_processor_files", "is_processor_file",
           "holds_processor", "is_timm_checkpoint", "timm_pretrained_cfg", "load_processor", "population_processor",
           "processor_fingerprint", "processor_files", "is_tokenizer"]

#: Files that make up a tokenizer / image / audio processor (never weights or the model config).
PROCESSOR_PATTERNS = (
    "tokenizer*.json", "tokenizer.model", "vocab*", "merges.txt", "spiece.model", "sentencepiece*.model",
    "special_tokens_map.json", "added_tokens.json", "chat_template.*", "preprocessor_config.json",
    "processor_config.json", "image_processor*.json", "feature_extractor*.json", "video_preprocessor*.json",
)


class ProcessorError(UserError):
    """No usable processor, or population members whose processors disagree."""


def is_processor_file(name: str) -> bool:
    """Whether a file name is one of a processor's (:data:`PROCESSOR_PATTERNS`)."""
    return any(fnmatch.fnmatchcase(name, p) for p in PROCESSOR_PATTERNS)


def processor_files(folder: str) -> list[str]:
    """The names of the processor files in ``folder`` (regular files only), sorted."""
    if not os.path.isdir(folder):
        return []
    return sorted(f for f in os.listdir(folder) if is_processor_file(f) and os.path.isfile(os.path.join(folder, f)))


def has_processor_files(folder: str) -> bool:
    return bool(processor_files(folder))


def copy_processor_files(src: str, dst: str) -> list[str]:
    """Copy ``src``'s processor files into ``dst`` (files already there are kept); returns the names copied.
    A timm checkpoint has none: its image processor lives in config.json (:func:`timm_pretrained_cfg`)."""
    copied = []
    for name in processor_files(src):
        if not os.path.exists(os.path.join(dst, name)):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))
            copied.append(name)
    return copied


def timm_pretrained_cfg(folder: str) -> dict | None:
    """The config.json entries that carry a timm checkpoint's image processor (None for any other folder).

    transformers' ``TimmWrapperImageProcessor`` reads them from config.json of whatever folder it loads, so another
    model exported beside a timm population (the BMA) carries them in its own config to load with ``pipeline``."""
    config = _timm_config(folder)
    if config is None:
        return None
    return {"architecture": config["architecture"], "pretrained_cfg": config["pretrained_cfg"],
            "image_processor_type": "TimmWrapperImageProcessor"}


def is_tokenizer(processor: Any) -> bool:
    from transformers import PreTrainedTokenizerBase

    return isinstance(processor, PreTrainedTokenizerBase)


def _timm_config(folder: str) -> dict | None:
    """``folder``'s config.json when it is a timm checkpoint's (see :func:`is_timm_checkpoint`), else None."""
    try:
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    timm = isinstance(config, dict) and "architecture" in config and isinstance(config.get("pretrained_cfg"), dict)
    return config if timm else None


def is_timm_checkpoint(folder: str) -> bool:
    """A folder as timm (or transformers' TimmWrapper) saves it: its ``config.json`` names the ``architecture`` and
    carries the ``pretrained_cfg`` from which ``AutoImageProcessor`` builds the image processor."""
    return _timm_config(folder) is not None


def holds_processor(folder: str) -> bool:
    """Whether ``folder`` carries a processor: processor files, or a timm checkpoint's ``pretrained_cfg``."""
    return has_processor_files(folder) or is_timm_checkpoint(folder)


def load_processor(name_or_path: str, revision: str | None = None):
    """The processor saved in ``name_or_path`` (a folder, or a Hub id when ``--processor_name_or_path`` names
    one): a tokenizer, an image processor, or a multimodal processor; a timm checkpoint's image processor comes
    from its config's ``pretrained_cfg``. ``None`` when a folder holds none."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    timm = os.path.isdir(name_or_path) and is_timm_checkpoint(name_or_path)
    if os.path.isdir(name_or_path) and not (timm or has_processor_files(name_or_path)):
        return None
    kwargs = {"revision": revision} if revision and not os.path.isdir(name_or_path) else {}
    errors = []
    image = timm or (os.path.isfile(os.path.join(name_or_path, "preprocessor_config.json"))
                     if os.path.isdir(name_or_path) else False)
    loaders = (AutoImageProcessor, AutoProcessor, AutoTokenizer) if image else (AutoTokenizer, AutoProcessor,
                                                                                AutoImageProcessor)
    for loader in loaders:
        try:
            return loader.from_pretrained(name_or_path, **kwargs)
        except Exception as e:  # noqa: BLE001 - each Auto class raises its own types; try the next one
            errors.append(f"{loader.__name__}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    raise ProcessorError(
        f"cannot load a tokenizer or image processor from {name_or_path!r} ({errors[0]}); "
        "pass --processor_name_or_path with a folder that holds one"
    )


def processor_fingerprint(processor: Any) -> dict:
    """What must agree between members: the vocabulary and special tokens of a tokenizer, the config of an
    image processor (everything that changes the model's inputs)."""
    if is_tokenizer(processor):
        return {
            "vocab": processor.get_vocab(),
            "special": {k: str(v) for k, v in sorted(processor.special_tokens_map.items())},
            "lowercase": bool(getattr(processor, "do_lower_case", False)),
            "padding_side": processor.padding_side,
        }
    d = processor.to_dict() if hasattr(processor, "to_dict") else dict(vars(processor))
    return {k: v for k, v in d.items() if k not in ("processor_class", "_processor_class")}


def population_processor(member_paths: Sequence[str], override: str | None = None, revision: str | None = None,
                         required: bool = False):
    """``(processor, source)``: ``override`` when given, else the first member's processor.

    Without ``override``, every member that carries a processor must agree with it (:func:`processor_fingerprint`). ``required``:
    raise when there is none (raw data needs one); otherwise ``(None, None)``.
    """
    source = override or (member_paths[0] if member_paths else None)
    processor = load_processor(source, revision if override else None) if source else None
    if processor is None:
        if required:
            raise ProcessorError(
                f"the raw data needs a tokenizer or image processor, but {source or 'the population'} has none; "
                "save it with the first anchor (processor.save_pretrained) or pass --processor_name_or_path"
            )
        return None, None
    if override:  # the user's choice for the whole population
        return processor, source
    reference = processor_fingerprint(processor)
    for path in member_paths:
        if path == source or not holds_processor(path):
            continue
        other = load_processor(path)
        if other is None:
            continue
        fp = processor_fingerprint(other)
        if fp != reference:
            what = next((k for k in sorted(set(fp) | set(reference)) if fp.get(k) != reference.get(k)), "?")
            raise ProcessorError(
                f"the processor of {path} differs from that of {source} ({what}); members must share one "
                "tokenizer / image processor (pass --processor_name_or_path to use one for all if the difference is harmless)"
            )
    return processor, source

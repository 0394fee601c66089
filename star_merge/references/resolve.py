"""Resolve a population (Hub ids, ``id@revision``, local folders, population files) to local checkpoints.

Order of work, so a bad population fails in seconds, not after gigabytes:

1. parse every source (``org/name``, ``org/name@rev``, a folder, a population file);
2. pin every Hub source to a commit sha and list its files (Hub API online, the cache offline) — a repo
   without ``*.safetensors`` fails here;
3. fetch only ``config.json`` of every member and check one model type and identical tensor shapes
   (the architecture is built on the meta device, no weights);
4. download the weights (safetensors only), members in parallel, with one progress bar.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

from .sources import (
    COMMIT_SHA,
    DOWNLOAD_PATTERNS,
    ROLE_KEYS,
    PopulationError,
    ResolvedMember,
    ResolvedMembers,
    Source,
    cache_root,
    check_weight_files,
    expand_sources,
    first_line,
    local_folder_hint,
    offline_hint,
    parallel_map,
    parse_source,
    read_population_file,
)

__all__ = [
    "DOWNLOAD_PATTERNS",
    "PopulationError",
    "ResolvedMember",
    "ResolvedMembers",
    "parse_source",
    "read_population_file",
    "resolve_members",
    "load_reference",
    "resolve_reference",
]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- pinning
def _pin_online(src: Source, token, cache_dir) -> bool:
    """Resolve ``src`` to a commit sha and its file list with the Hub API. False: Hub unreachable."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        import httpx2 as httpx  # the HTTP client of huggingface_hub 2.x
    except ImportError:  # pragma: no cover - older huggingface_hub
        import httpx

    try:
        info = HfApi(token=token).model_info(src.repo_id, revision=src.revision)
    except (OfflineModeIsEnabled, httpx.ConnectError, httpx.TimeoutException):
        return False
    except GatedRepoError:
        raise PopulationError(
            f"{src.repo_id} is gated; accept its conditions on https://huggingface.co/{src.repo_id} and log in "
            "(`hf auth login` or HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise PopulationError(f"{src.repo_id} has no revision {src.revision!r}; check the branch, tag or commit sha") from None
    except RepositoryNotFoundError:
        if local_folder_hint(src.source):
            raise PopulationError(local_folder_hint(src.source)) from None
        raise PopulationError(
            f"Hub model {src.repo_id!r} not found (or private without access); check the id, or log in "
            "(`hf auth login` or HF_TOKEN) if it is private"
        ) from None
    except HfHubHTTPError as e:
        if e.response is not None and e.response.status_code >= 500:
            return False  # Hub down: fall back to the cache like huggingface_hub does
        raise PopulationError(f"could not look up {src.source} on the Hub ({first_line(e)})") from None
    src.sha = info.sha
    src.files = [s.rfilename for s in (info.siblings or [])]
    return True


def _pin_from_cache(src: Source, cache_dir, offline: bool) -> None:
    """Resolve ``src`` to a commit sha and its file list from the local Hugging Face cache."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError
    from huggingface_hub.file_download import repo_folder_name

    why = "the Hub is offline (HF_HUB_OFFLINE=1)" if offline else "the Hub cannot be reached"
    root = cache_root(cache_dir)
    storage = os.path.join(root, repo_folder_name(repo_id=src.repo_id, repo_type="model"))
    if not os.path.isdir(storage):
        mistyped = local_folder_hint(src.source)
        if mistyped:
            raise PopulationError(mistyped)
        raise PopulationError(f"{src.repo_id} is not in the Hugging Face cache ({root}) and {why}; {offline_hint(src.repo_id)}")
    revision = src.revision or "main"
    snapshots = os.path.join(storage, "snapshots")
    sha = None
    if COMMIT_SHA.fullmatch(revision):
        sha = revision
    elif os.path.isfile(os.path.join(storage, "refs", revision)):
        with open(os.path.join(storage, "refs", revision)) as f:
            sha = f.read().strip()
    elif len(revision) >= 7 and all(c in "0123456789abcdef" for c in revision) and os.path.isdir(snapshots):
        matches = [s for s in os.listdir(snapshots) if s.startswith(revision)]  # a short sha
        if len(matches) == 1:
            sha = matches[0]
    if sha is None or not os.path.isdir(os.path.join(snapshots, sha)):
        cached = sorted(_cached_refs(storage))
        have = f" (cached: {', '.join(cached)})" if cached else ""
        raise PopulationError(
            f"{src.repo_id}@{revision} is not in the Hugging Face cache{have} and {why}; {offline_hint(f'{src.repo_id} --revision {revision}')}"
        )
    snapshot = os.path.join(snapshots, sha)
    present = []
    for folder, _, names in os.walk(snapshot):
        present += [os.path.relpath(os.path.join(folder, n), snapshot).replace(os.sep, "/") for n in names]
    try:
        listed = [f.path for f in get_cached_repo_tree(src.repo_id, revision=sha, cache_dir=root)]
    except CachedRepoTreeNotFoundError:
        listed = present
    src.sha = sha
    src.files = listed
    check_weight_files(f"{src.repo_id}@{revision}", listed)
    if not any(f.endswith(".safetensors") for f in present):
        raise PopulationError(
            f"{src.repo_id}@{revision} is only partly cached (no *.safetensors in {snapshot}) and {why}; "
            f"{offline_hint(f'{src.repo_id} --revision {revision}')}"
        )


def _cached_refs(storage: str) -> list[str]:
    refs = os.path.join(storage, "refs")
    out = []
    for folder, _, names in os.walk(refs):
        out += [os.path.relpath(os.path.join(folder, n), refs).replace(os.sep, "/") for n in names]
    return out


def _pin(src: Source, token, cache_dir) -> Source:
    from huggingface_hub import constants

    if src.path is not None:  # local folder
        if not os.path.isfile(os.path.join(src.path, "config.json")):
            raise PopulationError(f"{src.source} has no config.json; give a folder written by save_pretrained")
        check_weight_files(src.source, os.listdir(src.path))
        src.config_path = os.path.join(src.path, "config.json")
        return src
    offline = constants.HF_HUB_OFFLINE
    if offline or not _pin_online(src, token, cache_dir):
        _pin_from_cache(src, cache_dir, offline)
    else:
        check_weight_files(src.repo_id if not src.revision else f"{src.repo_id}@{src.revision}", src.files)
    if src.files is not None and "config.json" not in src.files:
        raise PopulationError(f"{src.repo_id} has no config.json at its root; star-merge needs a transformers checkpoint")
    return src


def _fetch_config(src: Source, token, cache_dir) -> Source:
    from huggingface_hub import hf_hub_download

    if src.config_path is None:
        try:
            src.config_path = hf_hub_download(
                src.repo_id, "config.json", revision=src.sha, cache_dir=cache_dir, token=token
            )
        except Exception as e:  # noqa: BLE001 - any failure here is reported as one line
            raise PopulationError(f"could not fetch config.json of {src.repo_id}@{src.sha[:10]} ({first_line(e)}); {offline_hint(src.repo_id)}") from None
    try:
        with open(src.config_path, encoding="utf-8") as f:
            src.config = json.load(f)
    except (OSError, ValueError) as e:
        raise PopulationError(f"config.json of {src.source} is unreadable ({first_line(e)})") from None
    if not isinstance(src.config, dict) or not src.config.get("model_type"):
        raise PopulationError(f"config.json of {src.source} names no model_type; give a transformers checkpoint")
    return src


# ---------------------------------------------------------------------------------------------- checks
_IGNORED_CONFIG_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "id2label", "label2id", "_commit_hash"}


def _shapes(src: Source) -> dict[str, tuple[int, ...]]:
    from transformers import AutoConfig

    from ..adapters import model_shapes
    from ..models import register_builtin_models

    register_builtin_models()
    folder = os.path.dirname(src.config_path)
    try:
        config = AutoConfig.from_pretrained(folder)  # never trust_remote_code
    except Exception as e:  # noqa: BLE001
        raise PopulationError(
            f"{src.source}: transformers cannot read its config (model_type {src.config['model_type']!r}; "
            f"{first_line(e)}); star-merge never runs remote code, so the architecture must be in transformers "
            "or registered with AutoConfig.register"
        ) from None
    try:
        return model_shapes(config)
    except Exception as e:  # noqa: BLE001
        raise PopulationError(f"{src.source}: cannot build its architecture on the meta device ({first_line(e)})") from None


def _check_compatible(sources: list[Source], reference: Source | None = None) -> str:
    """One model type and identical tensor shapes across ``sources`` (and ``reference``); returns the type."""
    everyone = ([reference] if reference is not None else []) + sources
    first = everyone[0]
    model_type = first.config["model_type"]
    for other in everyone[1:]:
        if other.config["model_type"] != model_type:
            raise PopulationError(
                f"population mixes model types: {first.label} is {model_type!r} but {other.label} is "
                f"{other.config['model_type']!r}; anchors and held-out models must share one architecture"
            )
    shapes_by_config: dict[str, dict] = {}
    ref_shapes = None
    for src in everyone:
        key = json.dumps({k: v for k, v in src.config.items() if k not in _IGNORED_CONFIG_KEYS}, sort_keys=True, default=str)
        if key not in shapes_by_config:
            shapes_by_config[key] = _shapes(src)
        shapes = shapes_by_config[key]
        if ref_shapes is None:
            ref_shapes = shapes
            continue
        if shapes != ref_shapes:
            missing = sorted(set(ref_shapes) ^ set(shapes))
            if missing:
                detail = f"tensor {missing[0]!r} is in only one of them"
            else:
                name = next(k for k in ref_shapes if ref_shapes[k] != shapes[k])
                detail = f"{name} has shape {tuple(shapes[name])} vs {tuple(ref_shapes[name])}"
            raise PopulationError(
                f"{src.label} does not match {first.label}: {detail}; a population needs identical architectures"
            )
    return model_type


# ---------------------------------------------------------------------------------------------- download
def _download(src: Source, token, cache_dir) -> str:
    from huggingface_hub import snapshot_download
    from tqdm.auto import tqdm

    class _Quiet(tqdm):  # the member-level bar below replaces the per-repo "Fetching n files" bar
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    try:
        path = snapshot_download(
            src.repo_id,
            revision=src.sha,
            cache_dir=cache_dir,
            token=token,
            allow_patterns=DOWNLOAD_PATTERNS,
            tqdm_class=_Quiet,
        )
    except Exception as e:  # noqa: BLE001
        raise PopulationError(
            f"downloading {src.repo_id}@{src.sha[:10]} failed ({first_line(e)}); files already downloaded stay "
            "in the cache, rerun to resume"
        ) from None
    check_weight_files(f"{src.repo_id}@{src.sha[:10]}", os.listdir(path))
    return path


def resolve_reference(reference: str, *, progress: bool = False) -> str:
    """The local checkpoint folder of one reference: a folder as it is, a Hub id ``org/name[@revision]`` as its
    snapshot (pinned to a commit, safetensors only; the cache when offline). The one resolver of ``star-merge
    align``, ``barrier`` and :func:`star_merge.matching.align_checkpoints`."""
    path = os.path.expanduser(reference)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise PopulationError(f"{reference!r} is a file; give the checkpoint's folder (with config.json)")
    try:
        (member,) = resolve_members([reference], progress=progress)
    except PopulationError as e:
        raise PopulationError(f"{reference!r} is neither a local folder nor a downloadable Hub model ({e})") from None
    return member.path


def load_reference(reference: str, device="cpu", name: str | None = None):
    """``(model, folder)`` of one reference (:func:`resolve_reference`), loaded with its config's class (safetensors
    only, never remote code) and checked finite (a NaN model has no meaningful alignment or barrier)."""
    from ..finite import check_finite
    from ..modeling import load_checkpoint

    folder = resolve_reference(reference)
    model = load_checkpoint(folder, device)
    check_finite(model.state_dict(), name or reference)
    return model, folder


def resolve_members(
    sources: Sequence[str] | str,
    *,
    role: str = "anchor",
    token: str | bool | None = None,
    cache_dir: str | None = None,
    max_workers: int = 8,
    progress: bool = True,
    like: Sequence[ResolvedMember] | None = None,
) -> ResolvedMembers:
    """Resolve population sources to local checkpoint folders, pinned to commit shas.

    ``sources``: Hub ids (``org/name``, ``org/name@branch|tag|sha``), checkpoint folders, or population
    files (a single string naming a file is one). ``token=None`` lets huggingface_hub use ``HF_TOKEN`` or
    the stored login; ``cache_dir=None`` is the Hugging Face cache; ``HF_HUB_OFFLINE=1`` resolves from the
    cache only. ``like``: an already resolved population these members must match (e.g. the anchors,
    when resolving held-out models). Every config is checked before any weights are downloaded.

    Returns the members in the order given, with ``.model_type`` on the returned list.
    """
    from tqdm.auto import tqdm

    if role not in ROLE_KEYS:
        raise PopulationError(f"role must be one of {', '.join(ROLE_KEYS)}, got {role!r}")
    srcs = expand_sources(sources, role)
    parallel_map(lambda s: _pin(s, token, cache_dir), srcs, max_workers)
    seen: dict[tuple, str] = {}
    for s in srcs:
        key = (s.repo_id, s.sha) if s.repo_id else (None, os.path.realpath(s.path))
        if key in seen:
            raise PopulationError(f"{s.source} and {seen[key]} are the same model; list each population member once")
        seen[key] = s.source
    parallel_map(lambda s: _fetch_config(s, token, cache_dir), srcs, max_workers)
    reference = None
    if like:
        ref = like[0]
        reference = _fetch_config(Source(ref.source, ref.repo_id, ref.revision, ref.path, sha=ref.revision,
                                          config_path=os.path.join(ref.path, "config.json")), token, cache_dir)
    model_type = _check_compatible(srcs, reference)

    remote = [s for s in srcs if s.repo_id is not None]
    paths: dict[int, str] = {}
    if remote:
        bar = tqdm(total=len(remote), desc=f"downloading {role} models", unit="model", disable=not progress)

        def fetch(s: Source) -> str:
            path = _download(s, token, cache_dir)
            bar.update(1)
            return path

        try:
            for s, path in zip(remote, parallel_map(fetch, remote, max_workers)):
                paths[id(s)] = path
        finally:
            bar.close()
    members = [
        ResolvedMember(
            source=s.source,
            repo_id=s.repo_id,
            revision=s.sha,
            path=paths.get(id(s), s.path),
            model_type=model_type,
            role=role,
        )
        for s in srcs
    ]
    for m in members:
        logger.info("%s %s -> %s", role, m.display, m.path)
    return ResolvedMembers(members, model_type)

"""Publish a run: the star (weights, config, card, plots, report) and optionally the BMA wrapper, one commit per repo.

Nothing in RUN_DIR is written: each repo's files are staged in a temporary folder (symlinks to the run's
weights, JSON files and the model card rewritten without local paths) and uploaded with one
``upload_folder`` call. Only an evaluated run with loadable, finite weights is published, and only its own
regular files (sanitize.py).
"""

from __future__ import annotations

import json
import logging
import os
from typing import NamedTuple

from .model_card import run_cards
from ..finite import check_finite_checkpoint
from ..rundir import RunPaths
from .publish import PushError, local_roots, publish_files
from .sanitize import is_publishable, publish_size, sanitize_text
from ..modeling import PICKLE_SUFFIXES

__all__ = ["PlannedFile", "PushError", "human_size", "push_run", "upload_plan"]

logger = logging.getLogger(__name__)


class PlannedFile(NamedTuple):
    """One file of an upload: ``local_path`` is None for a model card rendered at push time."""

    repo_id: str
    path_in_repo: str
    local_path: str | None
    size: int


def _check_repo_id(repo_id: str, flag: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise PushError(f"{flag} {repo_id!r} is not a valid Hub repo id; write org/name (or name for your own namespace)") from None


def _folder_files(folder: str, bma: bool = False) -> list[tuple[str, str]]:
    """(path relative to folder, absolute path) of the files to publish from ``folder``: the run's own
    regular files only (sanitize.py: no symlinks, no strays), no pickles, no model card (rendered separately)."""
    out = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(names):
            rel = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
            if name.startswith(".") or rel == "README.md":
                continue
            if name.endswith(PICKLE_SUFFIXES):
                logger.warning("not publishing %s: star-merge publishes safetensors only", os.path.join(folder, rel))
                continue
            if is_publishable(os.path.join(root, name), rel, bma):
                out.append((rel, os.path.join(root, name)))
    return out


def _checkpoint_files(folder: str, what: str, fix: str, bma: bool = False) -> list[tuple[str, str]]:
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise PushError(f"{folder} has no config.json, so there is no {what} to publish; {fix}")
    files = _folder_files(folder, bma)
    if not any(rel.endswith(".safetensors") for rel, _ in files):
        raise PushError(f"{folder} has no *.safetensors weights, so there is no {what} to publish; {fix}")
    try:  # truncated or NaN weights are never published
        check_finite_checkpoint(folder, f"the {what}")
    except ValueError as e:
        raise PushError(f"{e}; nothing was uploaded") from None
    return files


def _check_evaluated(run_dir: str) -> None:
    path = RunPaths(run_dir).report_json
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError):
        report = None
    if not isinstance(report, dict) or "summary" not in report:
        raise PushError(f"{run_dir} has not been evaluated ({path} is missing, unreadable or has no summary); "
                        f"run `star-merge evaluate {run_dir}` (or finish the run with --resume_from_checkpoint "
                        "latest) before pushing")


def _render_cards(run_dir: str, repo_id: str, bma_repo_id: str | None, license: str) -> dict[str, str]:
    sources = [RunPaths(run_dir).manifest_path, RunPaths(run_dir).report_json]
    return {k: sanitize_text(v, run_dir, sources) for k, v in _cards(run_dir, repo_id, bma_repo_id, license).items()}


def _cards(run_dir: str, repo_id: str, bma_repo_id: str | None, license: str) -> dict[str, str]:
    """repo id -> the card uploaded to it (the run's cards, :func:`.model_card.run_cards`)."""
    cards = run_cards(run_dir, repo_id=repo_id, bma_repo_id=bma_repo_id, license=license, bma=bool(bma_repo_id))
    return {repo: str(card) for repo, card in zip([repo_id, bma_repo_id], cards.values())}


def _plan(run_dir: str, repo_id: str, bma_repo_id: str | None, license: str) -> tuple[list[PlannedFile], dict[str, str]]:
    paths = RunPaths(run_dir).require(PushError)
    run_dir = paths.path
    _check_repo_id(repo_id, "--repo-id")
    if bma_repo_id is not None:
        _check_repo_id(bma_repo_id, "--bma-repo-id")
        if bma_repo_id == repo_id:
            raise PushError(f"--bma-repo-id must differ from --repo-id ({repo_id}); e.g. {repo_id}-bma")
    star = _checkpoint_files(
        paths.star_path, "star model", "train one with `accelerate launch recipes/star.py`"
    )
    _check_evaluated(run_dir)
    extra = paths.report_files()
    cards = _render_cards(run_dir, repo_id, bma_repo_id, license)
    plan = [PlannedFile(repo_id, rel, path, publish_size(path, run_dir)) for rel, path in star + extra]
    plan.append(PlannedFile(repo_id, "README.md", None, len(cards[repo_id].encode("utf-8"))))
    if bma_repo_id is not None:
        bma = _checkpoint_files(
            paths.bma_path, "BMA wrapper", f"export it with `star-merge export-bma {run_dir}` or drop --bma-repo-id",
            bma=True,
        )
        plan += [PlannedFile(bma_repo_id, rel, path, publish_size(path, run_dir)) for rel, path in bma]
        plan.append(PlannedFile(bma_repo_id, "README.md", None, len(cards[bma_repo_id].encode("utf-8"))))
    names = {}
    for f in plan:
        if (f.repo_id, f.path_in_repo) in names:
            raise PushError(f"two files would land at {f.repo_id}:{f.path_in_repo} ({names[f.repo_id, f.path_in_repo]} and {f.local_path}); rename one")
        names[f.repo_id, f.path_in_repo] = f.local_path
    return plan, cards


def upload_plan(
    run_dir: str, repo_id: str, *, bma_repo_id: str | None = None, license: str = "apache-2.0"
) -> list[PlannedFile]:
    """Exactly the files :func:`push_run` would upload, as ``(repo_id, path_in_repo, local_path, size)``.

    Star repo: ``star/`` contents at the root, ``*.png``, ``report.json``/``report.md`` and the model card
    ``README.md`` (``local_path=None``: rendered at push time from the run, updating ``RUN_DIR/README.md``
    when present). BMA repo: ``bma/`` contents (weights, config, code files) and its card.
    """
    return _plan(run_dir, repo_id, bma_repo_id, license)[0]


def _retry_hint(run_dir: str, repo_id: str, bma_repo_id: str | None, private: bool) -> str:
    cmd = f"star-merge push {run_dir} --repo-id {repo_id}"
    if bma_repo_id:
        cmd += f" --bma-repo-id {bma_repo_id}"
    if private:
        cmd += " --private"
    return cmd


def push_run(
    run_dir: str,
    repo_id: str,
    *,
    bma_repo_id: str | None = None,
    private: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    revision: str | None = None,
    license: str = "apache-2.0",
    commit_message: str | None = None,
) -> dict:
    """Publish RUN_DIR's star to ``repo_id`` (and its BMA wrapper to ``bma_repo_id``), one commit per repo.

    Repos are created if missing (``private=True`` makes new repos private; an existing repo keeps its
    visibility). ``revision``: a branch to commit to (created from the default branch if missing).
    ``token=None`` uses ``HF_TOKEN`` or the stored login. Call it on the main process only.

    Returns ``{"dry_run", "files": [PlannedFile...], "commits": {repo_id: commit url}}``; with ``dry_run``
    nothing is contacted and ``commits`` is empty.
    """
    plan, cards = _plan(run_dir, repo_id, bma_repo_id, license)
    if bma_repo_id is None and os.path.isdir(RunPaths(run_dir).bma_path):
        logger.warning("the BMA wrapper (%s) is not pushed; pass --bma-repo-id %s-bma to publish it too",
                       RunPaths(run_dir).bma_path, repo_id)
    result = {"dry_run": dry_run, "files": plan, "commits": {}}
    if dry_run:
        return result
    run_name = os.path.basename(os.path.abspath(run_dir))
    retry = _retry_hint(run_dir, repo_id, bma_repo_id, private)
    for target in [repo_id] + ([bma_repo_id] if bma_repo_id else []):
        what = "star model" if target == repo_id else "BMA wrapper"
        files = [(f.path_in_repo, f.local_path) for f in plan if f.repo_id == target]
        try:
            url = publish_files(target, files, cards[target], os.path.abspath(run_dir), private=private, token=token,
                                revision=revision, roots=local_roots(run_dir),
                                commit_message=commit_message or f"Upload {what} of star-merge run {run_name}")
        except PushError:
            raise
        except Exception as e:
            done = "" if not result["commits"] else f" ({', '.join(result['commits'])} was pushed)"
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise PushError(
                f"upload of the {what} to {target} failed ({type(e).__name__}: {first}){done}; "
                f"{run_dir} is unchanged, retry with `{retry}`"
            ) from e
        result["commits"][target] = url
        logger.info("pushed %s to %s", what, result["commits"][target])
    return result


# ------------------------------------------------------------------------------------------------ CLI
def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"

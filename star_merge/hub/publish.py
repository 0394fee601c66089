"""The one publishing path: stage a folder, sanitise it, hold a model card, upload it in one commit.

``StarlightTrainer.push_to_hub`` (a trained star), ``star-merge push`` / ``push_run`` (a run's star and BMA) and
merged-model exports all call :func:`publish_files`: each file is staged under its path in the repo (JSON files
rewritten without local absolute paths by :mod:`.sanitize`, the rest linked), the card is written as
``README.md``, and :func:`check_staged` refuses a staged folder without a card or with a local path in any JSON
file or the card before anything is contacted. A push without a card or with a local path is therefore
impossible by construction. On floor 7 (the trainer calls it); the run's cards are built on floor 8.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence

from ..errors import UserError
from .sanitize import absolute_paths_in, sanitize_json_text

__all__ = ["PushError", "check_staged", "local_roots", "publish_files", "stage_files"]


class PushError(UserError, RuntimeError):
    """Publishing failed or cannot start; the message says what to fix or how to retry."""


def stage_files(files: Sequence[tuple[str, str | None]], card: str, folder: str, base_dir: str) -> None:
    """Stage ``(path_in_repo, local_path)`` pairs into ``folder``: ``local_path=None`` is the card ``card``; a JSON
    file is written sanitised (paths inside ``base_dir`` made relative, other absolute paths cut to their name)."""
    for path_in_repo, local_path in files:
        target = os.path.join(folder, *path_in_repo.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if local_path is None:
            with open(target, "w", encoding="utf-8") as out:
                out.write(card)
        elif local_path.endswith(".json"):
            with open(local_path, encoding="utf-8") as src, open(target, "w", encoding="utf-8") as out:
                out.write(sanitize_json_text(src.read(), base_dir))
        else:
            try:
                os.symlink(os.path.abspath(local_path), target)
            except OSError:  # no symlinks (some Windows setups): copy
                shutil.copy2(local_path, target)


def local_roots(*extra: str | None) -> list[str]:
    """Folders of this machine that must never appear in published text: the home, temp and working folders
    and ``extra`` (the run, the output folder)."""
    roots = {os.path.expanduser("~"), tempfile.gettempdir(), os.getcwd(), *(os.path.abspath(e) for e in extra if e)}
    return sorted((r for r in roots if r not in ("/", "")), key=len, reverse=True)


def check_staged(folder: str, roots: Sequence[str]) -> None:
    """Refuse a staged folder without a non-empty ``README.md``, or with an absolute path in a JSON file or a
    local folder (``roots``) in any text file."""
    card = os.path.join(folder, "README.md")
    if not os.path.isfile(card) or os.path.getsize(card) == 0:
        raise PushError(f"refusing to publish {folder}: it holds no model card (README.md); nothing was uploaded")
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if not name.endswith((".json", ".md", ".txt", ".yaml", ".py")):
                continue
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
            in_json: set = set()
            if name.endswith(".json"):
                absolute_paths_in(json.loads(text), in_json)
            found = sorted(in_json) + [r for r in roots if r in text]
            if found:
                raise PushError(f"refusing to publish {os.path.relpath(path, folder)}: it holds the local path "
                                f"{found[0]}; nothing was uploaded")


def publish_files(repo_id: str, files: Sequence[tuple[str, str | None]], card: str, base_dir: str, *,
                  private: bool = False, token=None, revision: str | None = None,
                  commit_message: str = "Upload with star-merge", roots: Sequence[str] = ()) -> str:
    """Stage ``files`` and ``card``, check the staged folder, upload it to ``repo_id`` in one commit (creating the
    repo, and ``revision`` as a branch, if missing); returns the commit url. Nothing is uploaded when the check
    fails; the staging folder is always removed."""
    from huggingface_hub import HfApi

    staging = tempfile.mkdtemp(prefix="star-merge-push-")
    try:
        stage_files(files, card, staging, base_dir)
        check_staged(staging, list(roots) or local_roots(base_dir))
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="model", private=True if private else None, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=staging, repo_type="model", revision=revision,
                                 commit_message=commit_message)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return getattr(info, "commit_url", None) or str(info)

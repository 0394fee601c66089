"""Hand-built Hugging Face cache folders, so Hub ids resolve offline in tests.

``build_hf_cache(cache_dir, "org/name", checkpoint_folder)`` lays a saved checkpoint out exactly like
``huggingface_hub`` does after a download (verified with huggingface_hub 2.4)::

    <cache_dir>/models--org--name/
        refs/<revision_name>          text file holding the commit sha (no newline)
        snapshots/<sha>/<files>       symlinks into blobs/ (or plain copies with use_blobs=False)
        blobs/<git sha1 or sha256>    file contents
        trees/<sha>.json              the tree listing huggingface_hub caches per commit (optional)

With ``HF_HUB_OFFLINE=1`` and the cache pointed at ``cache_dir``, ``snapshot_download``,
``hf_hub_download`` and ``from_pretrained`` resolve ``org/name``, ``revision=<revision_name>`` and
``revision=<sha>`` from it. :func:`offline_hub` does the pointing for code running in this process
(huggingface_hub reads its settings at import time, so environment variables alone are not enough);
subprocesses only need the environment from :func:`offline_env`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

__all__ = ["build_dataset_cache", "build_hf_cache", "fake_sha", "offline_env", "offline_hub", "repo_cache_folder"]


def fake_sha(*parts: str) -> str:
    """A deterministic 40-hex-digit "commit sha" derived from ``parts``."""
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()


def repo_cache_folder(cache_dir: str, repo_id: str) -> str:
    """``<cache_dir>/models--org--name``: where huggingface_hub caches a model repo."""
    return os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def build_hf_cache(
    cache_dir: str,
    repo_id: str,
    folder: str | None = None,
    *,
    files: dict[str, bytes] | None = None,
    revision_name: str | None = "main",
    sha: str | None = None,
    use_blobs: bool = True,
    write_tree: bool = True,
) -> str:
    """Put the files of ``folder`` (and/or ``files``: path in repo -> bytes) into the cache as one commit.

    Returns the commit sha (``sha``, or one derived from the content). ``revision_name`` (a branch or tag
    such as ``"main"`` or ``"v1"``; ``None`` for none) is pointed at that commit, so several calls with
    different revision names build a repo with several branches. ``use_blobs`` stores contents in
    ``blobs/`` with relative symlinks like the real cache; ``write_tree`` also writes the per-commit tree
    listing, with which huggingface_hub notices missing files in an incomplete snapshot.
    """
    contents: dict[str, bytes] = {}
    if folder is not None:
        for root, _, names in os.walk(folder):
            for name in sorted(names):
                full = os.path.join(root, name)
                rel = os.path.relpath(full, folder).replace(os.sep, "/")
                with open(full, "rb") as f:
                    contents[rel] = f.read()
    contents.update(files or {})
    if not contents:
        raise ValueError("build_hf_cache needs a folder or files to put in the cache")
    if sha is None:
        digest = hashlib.sha1(repo_id.encode())
        for rel in sorted(contents):
            digest.update(rel.encode() + b"\0" + contents[rel])
        sha = digest.hexdigest()
    if len(sha) != 40 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"sha must be 40 lowercase hex digits, got {sha!r}")

    storage = repo_cache_folder(cache_dir, repo_id)
    snapshot = os.path.join(storage, "snapshots", sha)
    if os.path.isdir(snapshot):
        shutil.rmtree(snapshot)
    tree = {}
    for rel, data in sorted(contents.items()):
        target = os.path.join(snapshot, *rel.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        blob_id = _git_blob_sha1(data)
        entry = {"size": len(data), "blob_id": blob_id}
        # huggingface_hub names LFS blobs by their sha256, regular files by their git blob sha1.
        is_lfs = rel.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt"))
        if is_lfs:
            entry.update(lfs_sha256=hashlib.sha256(data).hexdigest(), lfs_size=len(data))
        tree[rel] = entry
        if use_blobs:
            blob = os.path.join(storage, "blobs", entry.get("lfs_sha256", blob_id))
            os.makedirs(os.path.dirname(blob), exist_ok=True)
            with open(blob, "wb") as f:
                f.write(data)
            os.symlink(os.path.relpath(blob, os.path.dirname(target)), target)
        else:
            with open(target, "wb") as f:
                f.write(data)
    if write_tree:
        os.makedirs(os.path.join(storage, "trees"), exist_ok=True)
        with open(os.path.join(storage, "trees", f"{sha}.json"), "w") as f:
            json.dump({"format_version": 1, "files": tree}, f, indent=1)
    if revision_name is not None:
        ref = os.path.join(storage, "refs", *revision_name.split("/"))
        os.makedirs(os.path.dirname(ref), exist_ok=True)
        with open(ref, "w") as f:
            f.write(sha)  # huggingface_hub writes the sha without a trailing newline
    return sha


def offline_env(hf_home: str) -> dict[str, str]:
    """Environment variables that make a subprocess use ``<hf_home>/hub`` offline."""
    return {
        "HF_HOME": hf_home,
        "HF_HUB_CACHE": os.path.join(hf_home, "hub"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def offline_hub(monkeypatch, hf_home: str) -> str:
    """Point this process (environment and huggingface_hub's constants, which transformers reads) offline.

    Returns the cache folder. Undone by ``monkeypatch`` at the end of the test.
    """
    import huggingface_hub.constants as hub_constants

    env = offline_env(hf_home)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HOME", hf_home)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    os.makedirs(env["HF_HUB_CACHE"], exist_ok=True)
    return env["HF_HUB_CACHE"]


def build_dataset_cache(datasets_cache: str, repo_id: str, splits: dict, config_name: str = "default",
                        sha: str | None = None) -> str:
    """Put a dataset (split name -> ``datasets.Dataset``) into a ``datasets`` cache as ``load_dataset(repo_id)``
    leaves it after a download (``<cache>/<org>___<name>/<config>/0.0.0/<sha>/``: dataset_info.json and arrow
    files), so that with ``HF_HUB_OFFLINE=1`` and ``HF_DATASETS_CACHE=datasets_cache`` it loads offline.
    Built with the parquet builder the Hub's parquet datasets use; returns the folder."""
    import glob
    import tempfile

    from datasets.packaged_modules.parquet.parquet import Parquet

    sha = sha or fake_sha(repo_id, config_name)
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for split, ds in splits.items():
            files[split] = [os.path.join(tmp, f"{split}.parquet")]
            ds.to_parquet(files[split][0])
        name = repo_id.split("/")[-1]
        Parquet(cache_dir=os.path.join(tmp, "cache"), dataset_name=name, config_name=config_name, data_files=files,
                hash=sha).download_and_prepare()
        (built,) = [p for p in glob.glob(os.path.join(tmp, "cache", name, "*", "*", "*")) if os.path.isdir(p)]
        target = os.path.join(datasets_cache, repo_id.replace("/", "___"), config_name, "0.0.0", sha)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.move(built, target)
    return target

"""``star-merge push RUN_DIR --repo-id org/name``: publish a run's star (and BMA wrapper) to the Hub."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..argparsing import add_command, positional
from ..hub.push import human_size, push_run

__all__ = ["PushArguments", "make_parser", "run"]


@dataclass
class PushArguments:
    """``star-merge push RUN_DIR --repo-id org/name``."""

    run_dir: str = positional("RUN_DIR", "a run directory written by recipes/star.py, or a `star-merge merge` output")
    repo_id: str = field(metadata={"help": "Hub repo for the star, org/name"})
    bma_repo_id: str | None = field(default=None, metadata={"help": "Hub repo for the BMA wrapper"})
    private: bool = field(default=False, metadata={"help": "create new repos as private"})
    revision: str | None = field(default=None, metadata={"help": "branch to commit to (created if missing)"})
    license: str = field(default="apache-2.0", metadata={"help": "license in the model card metadata"})
    dry_run: bool = field(default=False, metadata={"help": "print what would be uploaded; upload nothing"})


def make_parser(subparsers):
    """Add ``star-merge push`` to a ``star-merge`` subparsers object; its handler is :func:`run`."""
    return add_command(subparsers, "push", [PushArguments], run,
                       help="publish a run's star model (and BMA wrapper) to the Hugging Face Hub",
                       description="Upload RUN_DIR/star with its model card, plots and report.json to --repo-id (one commit), and "
                       "RUN_DIR/bma to --bma-repo-id. Authenticate with `hf auth login` or HF_TOKEN.")


def run(args: PushArguments) -> int:
    """Handler of ``star-merge push``; errors propagate (star_merge.cli prints them as one line)."""
    result = push_run(**asdict(args))
    if args.dry_run:
        repos = sorted({f.repo_id for f in result["files"]}, key=[f.repo_id for f in result["files"]].index)
        for repo in repos:
            files = [f for f in result["files"] if f.repo_id == repo]
            total = sum(f.size for f in files)
            print(f"{repo}: {len(files)} files, {human_size(total)} (dry run, nothing uploaded)")
            for f in files:
                source = f.local_path if f.local_path is not None else "(model card, generated)"
                print(f"  {f.path_in_repo:<40} {human_size(f.size):>10}  {source}")
        return 0
    for repo, url in result["commits"].items():
        print(f"pushed {repo}: {url}")
    return 0

"""Which state of the working tree ``make main`` executed the lessons from: written beside the executed notebooks.

    python website/execution_record.py --profile tiny   # the last step of `make main`

``executed.json`` holds the commit checked out, a hash of the uncommitted changes to tracked files, the profile and the
date. ``make site`` (website/make_site.py) shows it on every page and refuses notebooks executed from another state of
the working tree than the current one (:func:`check_fresh`). Only the standard library and git: recording takes a
fraction of a second, where importing the site's tools (and torch, through rrhf_lite) would take ten.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECORD = "executed.json"  # written beside the executed notebooks by `make main`


class StaleNotebooks(RuntimeError):
    """The executed notebooks do not come from the working tree as it is now."""


def tree_state(repo: Path = REPO) -> dict[str, str]:
    """The commit checked out and a hash of the uncommitted changes to tracked files (empty if there are none)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout

    diff = git("diff", "HEAD")
    return {"commit": git("rev-parse", "HEAD").strip(),
            "changes": hashlib.sha256(diff.encode()).hexdigest()[:16] if diff else ""}


def record_execution(notebooks_dir: Path, profile: str, repo: Path = REPO) -> dict:
    """Write ``executed.json`` beside the executed notebooks: the tree state, the profile and the date."""
    record = {**tree_state(repo), "profile": profile,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    notebooks_dir.mkdir(parents=True, exist_ok=True)
    (notebooks_dir / RECORD).write_text(json.dumps(record, indent=1))
    return record


def _describe(state: dict) -> str:
    changes = state.get("changes")
    return state.get("commit", "?")[:10] + (f" with uncommitted changes {changes}" if changes else "")


def check_fresh(notebooks_dir: Path, repo: Path = REPO) -> dict:
    """The record of ``make main``'s execution, if it matches the working tree; else :class:`StaleNotebooks`."""
    path = notebooks_dir / RECORD
    if not path.exists():
        raise StaleNotebooks(f"{path} is missing: run `make main` to execute the lessons, then `make site`")
    record, now = json.loads(path.read_text()), tree_state(repo)
    if (record.get("commit"), record.get("changes")) != (now["commit"], now["changes"]):
        raise StaleNotebooks(f"the notebooks in {notebooks_dir} were executed from {_describe(record)}, the working "
                             f"tree is {_describe(now)}: run `make main` again, then `make site`")
    return record


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default=os.environ.get("RRHF_LITE_PROFILE", "tiny"),
                        help="profile name (default: $RRHF_LITE_PROFILE or tiny)")
    parser.add_argument("--runs", type=Path, default=REPO / "runs")
    args = parser.parse_args(argv)
    record_execution(args.runs / args.profile / "notebooks", args.profile)


if __name__ == "__main__":
    main()

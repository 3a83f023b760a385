"""One-off migration of the stored NTK records to the one record-key rule (issue 10).

The old NTK runner derived a record's params from ``locals()``, so the runner argument
``device`` and the loop variable ``s`` leaked into every key. For every record of
``ntk_width`` and ``ntk_trajectory`` under a profile folder this script drops ``device`` and
``s`` from ``params``, recomputes the key with ``results.record_key({**params, "seed": seed})``,
renames the ``.json`` and the ``.npz`` beside it (``os.rename``) and rewrites the record's
``params`` (``result`` and ``provenance`` are left untouched). Records already migrated are
skipped, so a second run changes nothing.

    .venv/bin/python scripts/migrate_ntk_keys.py data/records/cpu [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from bplib.results import record_key, write_atomic

EXPERIMENTS = ("ntk_width", "ntk_trajectory")
LEAKED = ("device", "s")


def migrate(profile_dir: Path, dry_run: bool = False) -> dict[str, str]:
    """``{old path: new path}`` of every record renamed under ``profile_dir``."""
    mapping = {}
    for experiment in EXPERIMENTS:
        for old in sorted((Path(profile_dir) / experiment).glob("*.json")):
            record = json.loads(old.read_text())
            if not any(k in record["params"] for k in LEAKED):
                continue
            params = {k: v for k, v in record["params"].items() if k not in LEAKED}
            params["seed"] = record["seed"]
            new = old.with_name(f"{record_key(params)}.json")
            if new.exists():
                raise FileExistsError(f"{old} would overwrite {new}")
            mapping[str(old)] = str(new)
            if dry_run:
                continue
            os.rename(old, new)
            if old.with_suffix(".npz").exists():
                os.rename(old.with_suffix(".npz"), new.with_suffix(".npz"))
            write_atomic(new, {**record, "params": params})
    return mapping


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile_dir", type=Path, help="e.g. data/records/cpu")
    parser.add_argument("--dry-run", action="store_true", help="rename nothing, list only")
    args = parser.parse_args()
    mapping = migrate(args.profile_dir, args.dry_run)
    for old, new in mapping.items():
        print(f"{old} -> {Path(new).name}")
    print(f"{len(mapping)} record(s) {'to migrate' if args.dry_run else 'migrated'}")


if __name__ == "__main__":
    main()

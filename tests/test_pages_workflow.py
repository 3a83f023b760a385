"""The GitHub Pages workflow builds the book with the README's command and publishes the folder
the README names (the workflow cannot run here; this keeps the two from drifting apart)."""

import importlib.util
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def readme_book_command() -> tuple[str, str]:
    """(command, html folder) from the README's "Two commands" block."""
    text = (REPO / "README.md").read_text()
    m = re.search(r"^(make book)\s+# build the website into (\S+)", text, re.MULTILINE)
    assert m, "README.md no longer says how the book is built (make book ... into <folder>)"
    return m[1], m[2]


def test_pages_workflow_runs_the_readme_command_and_publishes_its_html():
    command, html = readme_book_command()
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "pages.yml").read_text())
    steps = [s for job in workflow["jobs"].values() for s in job.get("steps", [])]
    runs = [s["run"].strip() for s in steps if "run" in s]
    assert command in runs, (command, runs)
    uploads = [s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact")]
    assert [s["with"]["path"] for s in uploads] == [html]
    assert any(s.get("uses", "").startswith("actions/deploy-pages") for s in steps)


def test_pages_workflow_gives_the_build_the_records_data():
    """The committed records were made from the offline npz files (their provenance names them by
    checksum); without them every chapter would refuse its records as made from other data. The
    workflow writes them from torchvision's download before the build, and BPLIB_DATA points there.
    """
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "pages.yml").read_text())
    steps = [s for job in workflow["jobs"].values() for s in job.get("steps", [])]
    runs = [s.get("run", "").strip() for s in steps]
    data = next(i for i, r in enumerate(runs) if "scripts/offline_cifar.py" in r)
    build = runs.index(readme_book_command()[0])
    assert data < build and '"$RUNNER_TEMP/cifar"' in runs[data]
    assert steps[build]["env"]["BPLIB_DATA"] == "${{ runner.temp }}/cifar"


def test_offline_folder_written_from_torchvision_arrays_verifies_as_the_records_data(tmp_path):
    """torchvision's arrays (here: the shipped offline copy's, which are torchvision's bit for
    bit, with 9,000 test images fewer) become files whose identity is the one the records carry;
    one changed pixel is refused."""
    import numpy as np
    import pytest

    from bplib.data import DEFAULT_OFFLINE_DIR, data_identity
    from bplib.data_checksums import DataFileError

    shipped = DEFAULT_OFFLINE_DIR / "cifar10.npz"
    if not shipped.exists():
        pytest.skip("the offline CIFAR-10 folder is not beside the repository")
    spec = importlib.util.spec_from_file_location(
        "offline_cifar", REPO / "scripts" / "offline_cifar.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with np.load(shipped) as z:
        arrays = [z[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    ids = script.write_offline(tmp_path / "ok", *arrays)
    assert ids[0] == data_identity("cifar10") and ids[1] == data_identity("cifar10_small")
    arrays[0] = arrays[0].copy()
    arrays[0][0, 0, 0, 0] ^= 1
    with pytest.raises(DataFileError, match="cifar10.npz"):
        script.write_offline(tmp_path / "bad", *arrays)

"""The GitHub Pages workflow builds the book with the README's command and publishes the folder
the README names (the workflow cannot run here; this keeps the two from drifting apart)."""

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

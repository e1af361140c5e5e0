"""The course as a website: the lessons as ``make main`` executed them, with their figures and the results table.

    make site          # after `make main`: runs/<profile>/site/index.html (open it, or serve the folder)

It reads what ``make main`` wrote for the profile (``RRHF_LITE_PROFILE``, ``tiny`` by default) and builds a static
site with MkDocs: a home page with the lesson map, the reward-KL frontier and lesson 09's results table, then one page
per lesson with every output, each page linking its *Open in Colab* badge and its source on GitHub.

Why MkDocs with mkdocs-jupyter: it renders the executed notebooks as they are (nbconvert, the Jupyter project's own
converter) with nothing to install but Python packages, builds offline and fast, and Material for MkDocs gives the
navigation and search. Jupyter Book 2 would be the other choice, but its first build downloads its page template,
which machines without internet (like this project's CI) cannot. Equations are typeset by MathJax 2.7, the version
nbconvert's pages are written for, with its CommonHTML output: installed from the npm registry on the first build
into ``runs/.site-cache/`` (the one step that needs a network) and served with the site, so that a page loads
nothing from another host. (The Jupyter project's offline package of MathJax 2, jupyter-server-mathjax, has only the
older HTML-CSS output with STIX fonts, which asks Chromium for fonts it does not ship and for ``about:blank``.)

Never stale: ``make main`` records which commit (and which uncommitted changes) it executed the lessons from
(``website/execution_record.py``), the site shows that commit, the date and the profile on every page, and the build
refuses notebooks executed from another state of the working tree than the current one.

Made to read: the site's own stylesheet and script (``website/site.css``, ``website/site.js``, served with it) keep
every table cell on one line with its numbers aligned, let a wide table, a long line of code or of output scroll in
its own box, and enlarge a figure on a click. A page may show no folder of the machine that built it (lessons print
paths with :func:`rrhf_lite.course.profiles.shown`, as ``runs/tiny/...``): a site that would show the repository's
or the runs' absolute folder is refused, naming the page.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import yaml
from execution_record import StaleNotebooks, check_fresh  # website/execution_record.py, beside this script
from frontier import frontier_svg  # website/frontier.py, likewise

from rrhf_lite.course.compare import COLUMNS, with_intervals
from rrhf_lite.course.profiles import get_profile

REPO = Path(__file__).resolve().parents[1]
GITHUB = "https://github.com/rrhf-lite/rrhf-lite"
MATHJAX = "mathjax@2.7.9"  # nbconvert's pages configure MathJax 2 (MathJax.Hub.Config)
MATHJAX_URL = "assets/mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe"
# what the site serves of it: the TeX input, the CommonHTML output and its web fonts (about 1.5 MB of its 48)
MATHJAX_FILES = ("MathJax.js", "LICENSE", "config/TeX-AMS_CHTML-full.js", "config/Safe.js", "extensions",
                 "localization/en", "jax/input/TeX", "jax/output/CommonHTML", "jax/element", "fonts/HTML-CSS/TeX/woff")
COLAB_BADGE = re.compile(r"https://colab\.research\.google\.com/assets/colab-badge\.svg")
# Every page may load only the site's own files (scripts, styles, images, fonts, the search worker) and send nothing
# anywhere: a notebook output that tried would be refused by the browser. Inline scripts and eval stay allowed:
# nbconvert writes the page's MathJax configuration as an inline text/x-mathjax-config block, which MathJax 2 runs
# with eval (the outputs that could hold a script of their own are removed in page_notebook).
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
                           "style-src 'self' 'unsafe-inline'; "
                           "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self'; "
                           "object-src 'none'; frame-src 'none'; base-uri 'self'; form-action 'self'")
# The rich outputs a lesson makes on purpose: pandas tables (HTML, with a text version) and figures; anything else a
# cell can display (JavaScript, other HTML, widgets) is kept only as its text version
KEPT_OUTPUTS = ("text/plain", "image/png", "image/svg+xml", "text/markdown", "text/latex")
DATAFRAME_HTML = re.compile(r'\A\s*<div>\s*(<style scoped>.*?</style>\s*)?<table border="1" class="dataframe', re.S)
# The site's own stylesheet and script for tables, code and figures (website/site.css, site.js), on every page
OWN_ASSETS = ("site.css", "site.js")
# The results table's plain numbers, to the digits that mean something; any other is shown to 2 (the measured values
# are text by then: each with its interval)
DECIMALS = {"train_seconds": 1, "peak_memory_mb": 0, "trainable_parameters": 0, "training_samples": 0,
            "samples_per_answer": 0, "prompts": 0}


class MachinePaths(Exception):
    """The site would show folders of the machine that built it (a lesson printed where it ran)."""


def install_mathjax(cache: Path) -> Path:
    """MathJax's folder, installed from the npm registry into ``cache`` on the first build (the build's one step that
    needs a network; later builds reuse it)."""
    folder = cache / "node_modules" / "mathjax"
    if not (folder / "MathJax.js").exists():
        if shutil.which("npm") is None:
            raise FileNotFoundError("the first `make site` installs MathJax with npm: install Node.js's npm")
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(cache), MATHJAX],
                       check=True)
    return folder


def copy_mathjax(cache: Path, target: Path) -> None:
    mathjax = install_mathjax(cache)
    for name in MATHJAX_FILES:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (mathjax / name).is_dir() else shutil.copy)(mathjax / name, target / name)


def lesson_map(readme: Path, lessons: list[str]) -> str:
    """The README's lesson map, its links turned from notebooks into the site's pages (``lessons``, e.g.
    ``"00_tiny_world.ipynb"``); a lesson the site does not have keeps its name without a link."""
    table = readme.read_text().split("## Lesson map", 1)[1].split("\n\n", 2)[1]

    def link(match: re.Match) -> str:
        name = f"{match[2]}.ipynb"
        return f"[{match[1]}]({name})" if name in lessons else match[1]

    return re.sub(r"\[([^\]]+)\]\(notebooks/(\d\d_\w+)\.ipynb\)", link, table)


def heading(column: str) -> str:
    """A column of the results table in words: ``gold_reward_vs_sft`` -> ``"gold reward vs SFT"``."""
    words = {"kl": "KL", "sft": "SFT", "mb": "MB"}
    return " ".join(words.get(word, word) for word in column.split("_"))


def results_table(results: pd.DataFrame) -> str:
    """Lesson 09's results table (results.csv, indexed by method) as HTML to read: the method, then each measured
    value with its 95% interval in one cell (``2.06 [1.95, 2.17]``, as the lesson shows it), counts with thousands
    separators, the columns named in words and explained below it; in a box of its own that scrolls sideways when
    wider than the page (website/site.css)."""
    table = with_intervals(results)
    for column in table.select_dtypes("number"):
        digits = DECIMALS.get(column, 2)
        table[column] = [f"{value:,.{digits}f}" if pd.notna(value) else "n/a" for value in table[column]]
    notes = "".join(f"<li><b>{heading(column)}</b> (<code>{column}</code>): {html.escape(COLUMNS[column])}</li>"
                    for column in table.columns if column in COLUMNS)
    table = table.rename(columns=heading).rename_axis(index=None, columns="method")  # "method" heads the first column
    return (f'<div class="table-scroll">\n{table.to_html(classes="results", border=0)}\n</div>\n\n'
            f"<details><summary>What the columns mean</summary><ul>{notes}</ul></details>")


def page_notebook(source: Path, target: Path, record: dict) -> str:
    """Copy an executed lesson for the site: the Colab badge drawn from the site's own copy, and a line under the
    title with its source on GitHub and what it was executed from. Returns the lesson's title."""
    nb = nbformat.read(source, as_version=4)
    title_cell = nb.cells[0]
    title = title_cell.source.splitlines()[0].lstrip("# ").strip()
    title_cell.source = COLAB_BADGE.sub("assets/colab-badge.svg", title_cell.source)
    provenance = (f"[Source on GitHub]({GITHUB}/blob/{record['commit']}/notebooks/{source.name}) · executed from "
                  f"commit `{record['commit'][:10]}` on {record['date']}, profile `{record['profile']}`")
    nb.cells.insert(1, nbformat.v4.new_markdown_cell(provenance))
    # progress bars are widgets in an executed notebook: keep their text, drop the widget state, which would make the
    # page load the widget library from a CDN; and every rich output but tables and figures (KEPT_OUTPUTS)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            for kind in [k for k in data if k not in KEPT_OUTPUTS]:
                if not (kind == "text/html" and is_table(data[kind])):
                    del data[kind]
    nbformat.write(nb, target)
    return title


def is_table(html_output) -> bool:
    """Whether an HTML output is a pandas table (what lessons display on purpose) with no script in it."""
    text = "".join(html_output) if isinstance(html_output, list) else str(html_output)
    return bool(DATAFRAME_HTML.match(text)) and "<script" not in text.lower()


def write_docs(profile: str, runs: Path, docs: Path, record: dict, cache: Path, outputs: Path) -> list[dict]:
    """The site's sources: home page, one executed notebook per lesson, figures, MathJax. Returns the navigation.
    ``outputs`` is the folder the lessons wrote their figures and results table into (``profile.runs_path``)."""
    notebooks = sorted((runs / profile / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no executed lessons in {runs / profile / 'notebooks'}: run `make main` first")
    shutil.rmtree(docs, ignore_errors=True)
    (docs / "assets").mkdir(parents=True)
    for name in ("colab-badge.svg", *OWN_ASSETS):
        shutil.copy(Path(__file__).parent / name, docs / "assets" / name)
    copy_mathjax(cache, docs / "assets" / "mathjax")
    nav = [{"Home": "index.md"}]
    for notebook in notebooks:
        nav.append({page_notebook(notebook, docs / notebook.name, record): notebook.name})

    home = ["# rrhf-lite: the course, executed", "",
            f"Every lesson below as `make main` ran it on the `{profile}` profile, outputs included, from commit "
            f"[`{record['commit'][:10]}`]({GITHUB}/tree/{record['commit']}) on {record['date']}. Open a lesson "
            f"to read it; its *Open in Colab* badge runs it. The code: [{GITHUB}]({GITHUB}).", "",
            "## Lessons", "", lesson_map(REPO / "README.md", [n.name for n in notebooks]), ""]
    frontier, results = outputs / "figures" / "09_frontier.png", outputs / "results.csv"
    if frontier.exists() or results.exists():
        home += ["## The reward-KL frontier", ""]
    if frontier.exists():
        shutil.copy(frontier, docs / "assets" / frontier.name)
        figure = f"assets/{frontier.name}"  # linked to itself: a click shows it at full size (website/site.js)
        home += ["Lesson 09's figure; click it to enlarge it.", "",
                 f"[![Gold reward against KL from the SFT model for every method]({figure}){{ .zoomable }}]({figure})",
                 ""]
    if results.exists():
        table = pd.read_csv(results, index_col="method")
        home += ["The same methods to explore, from the results table below:", "", frontier_svg(table), "",
                 "## Every method side by side", "",
                 "Lesson 09's results table: each measured value with its 95% bootstrap interval over held-out "
                 "prompts.", "", results_table(table), ""]
    (docs / "index.md").write_text("\n".join(home))
    return nav


def mkdocs_config(profile: str, docs: Path, site: Path, nav: list[dict], record: dict) -> dict:
    return {
        "site_name": "rrhf-lite",
        "site_description": "Aligning language models with human preferences: every method, run for real",
        "docs_dir": str(docs), "site_dir": str(site),
        "use_directory_urls": False,  # pages side by side, so that one relative MathJax address serves them all
        "nav": nav,
        "copyright": html.escape(f"Built from commit {record['commit'][:10]} (executed {record['date']}), profile "
                                 f"{profile}"),
        # website/overrides/main.html puts CONTENT_SECURITY_POLICY in every page's head
        "theme": {"name": "material", "font": False,  # no web fonts: nothing is fetched from another host
                  "custom_dir": str(Path(__file__).resolve().parent / "overrides"),
                  "features": ["navigation.footer", "navigation.top"]},
        "markdown_extensions": ["tables", "attr_list"],
        "extra": {"content_security_policy": CONTENT_SECURITY_POLICY},
        "extra_css": [f"assets/{name}" for name in OWN_ASSETS if name.endswith(".css")],
        "extra_javascript": [f"assets/{name}" for name in OWN_ASSETS if name.endswith(".js")],
        "plugins": [{"search": {}},
                    {"mkdocs-jupyter": {"execute": False, "include_source": True, "ignore_h1_titles": True,
                                        "custom_mathjax_url": MATHJAX_URL}}],
    }


def machine_paths(site: Path, folders: list[Path]) -> list[str]:
    """Every page of ``site`` that shows one of ``folders`` (the absolute folders of the machine building it), as
    ``"<page>: <folder>, ..."``: what a lesson printing where it ran would put on a published page."""
    found = []
    for page in sorted(site.glob("*.html")):
        text = page.read_text()
        exposed = [str(folder) for folder in folders if str(folder) in text]
        if exposed:
            found.append(f"{page.name}: {', '.join(exposed)}")
    return found


def build_site(profile: str = "tiny", runs: Path = REPO / "runs", cache: Path | None = None,
               outputs: Path | None = None) -> Path:
    """Build ``runs/<profile>/site`` from the executed lessons; returns the site's folder. MathJax is installed into
    ``cache`` (default ``runs/.site-cache``) on the first build. The figures and the results table come from
    ``outputs`` (default ``runs/<profile>``; ``make site`` passes the profile's ``runs_path``, which
    ``$RRHF_LITE_RUNS`` moves). A site whose pages would show the repository's or the runs' absolute folder is
    refused (:class:`MachinePaths`), and the previous one is left as it was."""
    record = check_fresh(runs / profile / "notebooks")
    outputs = outputs or runs / profile
    out = runs / profile / "site"
    work = out.parent / f".{out.name}-build"
    nav = write_docs(profile, runs, work / "docs", record, cache or runs / ".site-cache", outputs)
    config = work / "mkdocs.yml"
    config.write_text(yaml.safe_dump(mkdocs_config(profile, work / "docs", work / "site", nav, record),
                                     sort_keys=False))
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--quiet", "--strict", "--clean", "--config-file",
                    str(config)], check=True, env=env, cwd=work)  # mkdocs-jupyter's cache goes to work/.cache
    folders = list(dict.fromkeys([REPO, runs.resolve(), outputs.resolve()]))
    exposed = machine_paths(work / "site", folders)
    if exposed:
        shutil.rmtree(work)
        raise MachinePaths("the site would show this machine's folders (print paths with "
                           "rrhf_lite.course.profiles.shown, then run `make main` again): " + "; ".join(exposed))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(work / "site", out)
    shutil.rmtree(work)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["build"], help="build the site")
    parser.add_argument("--profile", default=None, help="profile name (default: $RRHF_LITE_PROFILE or tiny)")
    parser.add_argument("--runs", type=Path, default=REPO / "runs")
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    try:  # the figures and results.csv are where the lessons wrote them: the profile's runs_path
        site = build_site(profile.name, args.runs, outputs=profile.runs_path)
    except (StaleNotebooks, MachinePaths) as e:
        sys.exit(f"make site: {e}")
    print(f"site: {site / 'index.html'}")


if __name__ == "__main__":
    main()

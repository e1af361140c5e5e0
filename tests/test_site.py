"""The website of ``make site`` (website/make_site.py), built from a few small executed notebooks and checked in a
real browser: Debian's Chromium, driven by Playwright. Every page loads with no console error and no failed request,
no broken link or image, every figure has a size, the navigation reaches every lesson, and the maths is typeset.

Where Chromium is not installed (``apt-get install chromium``) the browser test says so and is skipped; in CI
(``CI`` set) it fails instead, since .ci/run installs it.
"""

import functools
import http.server
import json
import os
import shutil
import sys
import threading
from pathlib import Path

import matplotlib
import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from rrhf_lite.course import compare
from rrhf_lite.course.profiles import get_profile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "website"))
import execution_record  # noqa: E402  (website/execution_record.py: a script, not part of the package)
import make_site  # noqa: E402  (website/make_site.py: likewise)

CHROMIUM = "/usr/bin/chromium"
TYPESET = ".MathJax_CHTML"  # what MathJax 2's CommonHTML output puts in place of a formula it typeset
# as root, headless, and without the background connections that a machine with no internet refuses
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def lesson(path: Path, number: str, title: str, cells: list[str]) -> None:
    """An executed lesson: a title cell like the real ones (heading, Colab badge), then ``cells`` (code, or markdown
    when a cell starts with '#'), run by a Jupyter kernel as ``make main`` runs the lessons."""
    badge = (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research."
             f"google.com/github/rrhf-lite/rrhf-lite/blob/main/notebooks/{path.name})")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {number} · {title}\n\n{badge}")])
    for source in cells:
        new = nbformat.v4.new_markdown_cell if source.startswith("#") else nbformat.v4.new_code_cell
        nb.cells.append(new(source))
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)


def build_small_site(runs: Path) -> Path:
    """A site built by make_site from two executed lessons, the frontier figure and a results table. The lessons
    write figures and table into the profile's runs_path, here another folder than the executed notebooks' (as when
    $RRHF_LITE_RUNS moves the stage cache)."""
    profile = get_profile("tiny", runs_dir=str(runs / "stage-cache"))
    notebooks, figures = runs / "tiny" / "notebooks", profile.runs_path / "figures"
    notebooks.mkdir(parents=True)
    figures.mkdir(parents=True)
    lesson(notebooks / "00_tiny_world.ipynb", "00", "The tiny world", [
        "## Bradley-Terry\n\nA labeller prefers $y_c$ with probability $\\sigma(r_c - r_r)$:\n\n"
        "$$P(y_c \\succ y_r) = \\frac{1}{1 + e^{-(r_c - r_r)}}.$$\n\n"
        "The loss, in the fonts lessons use: $\\mathcal{L} = -\\mathbb{E}[\\log \\sigma(\\beta\\,\\Delta)]$.",
        "import matplotlib.pyplot as plt\nplt.plot([0, 1, 2], [0, 1, 4])\nplt.title('gold reward')\nplt.show()",
        "print('sanity check: ln 2 =', round(__import__('math').log(2), 4))"])
    lesson(notebooks / "09_side_by_side.ipynb", "09", "Side by side", [
        "import pandas as pd\npd.DataFrame({'gold_reward': [2.1, 3.0]}, index=['SFT', 'DPO'])",
        # outputs no lesson makes on purpose: HTML with a script, JavaScript (the site keeps their text versions)
        "from IPython.display import HTML, Javascript, display\n"
        "display(HTML('<b>planted</b><script>fetch(\"https://example.com/steal\")</script>'))\n"
        "display(Javascript('document.title = \"owned\"'))"])
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.plot([0, 1], [2, 3])
    plt.savefig(figures / "09_frontier.png")
    plt.close()
    # lesson 09's table, written by the function lesson 09 writes it with: SFT and one method, every column
    table = pd.DataFrame({column: [0.5, 1.0] for column in compare.COLUMNS}, index=pd.Index(["SFT", "DPO"],
                                                                                          name="method"))
    table.loc["DPO", ["gold_reward", "gold_reward_lo", "gold_reward_hi"]] = [3.0, 2.8, 3.2]
    compare.save_results(table, profile)
    execution_record.record_execution(notebooks, "tiny")
    return make_site.build_site("tiny", runs, cache=REPO / "runs" / ".site-cache",  # MathJax, shared by runs
                                outputs=profile.runs_path)


def test_the_build_refuses_notebooks_executed_from_another_commit(tmp_path):
    execution_record.record_execution(tmp_path, "tiny")
    assert execution_record.check_fresh(tmp_path)["profile"] == "tiny"
    record = json.loads((tmp_path / execution_record.RECORD).read_text())
    for stale in ({"commit": "0" * 40}, {"changes": "an edit since"}):
        (tmp_path / execution_record.RECORD).write_text(json.dumps({**record, **stale}))
        with pytest.raises(execution_record.StaleNotebooks, match="run `make main` again"):
            execution_record.check_fresh(tmp_path)
    (tmp_path / execution_record.RECORD).unlink()
    with pytest.raises(execution_record.StaleNotebooks, match="missing"):
        execution_record.check_fresh(tmp_path)


def browser():
    """Playwright's Chromium: Debian's build (a browser that a tool downloads itself cannot be fetched here)."""
    if not Path(CHROMIUM).exists() or shutil.which("npm") is None:
        message = "Debian's chromium (apt-get install chromium) and npm are needed to check the site in a browser"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run installs chromium")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    return sync_playwright()


def serve(folder: Path) -> str:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}/"


def test_the_site_of_two_lessons_in_chromium(tmp_path):
    site = build_small_site(tmp_path)
    # the home page: the lesson map linking the pages, the frontier, the results table with intervals
    home = (site / "index.html").read_text()
    assert "00_tiny_world.html" in home and "09_side_by_side.html" in home
    assert "assets/09_frontier.png" in home and 'class="dataframe results"' in home
    assert "3.00 [2.80, 3.20]" in home  # DPO's gold reward with its interval, as lesson 09 shows it
    record = execution_record.tree_state()
    for page in ("index.html", "00_tiny_world.html", "09_side_by_side.html"):  # every page says what it was built from
        text = (site / page).read_text()
        assert f"Built from commit {record['commit'][:10]}" in text
        assert f'<meta http-equiv="Content-Security-Policy" content="{make_site.CONTENT_SECURITY_POLICY}">' in text
    side_by_side = (site / "09_side_by_side.html").read_text()
    assert 'class="dataframe"' in side_by_side  # the table the lesson displays on purpose
    assert '<script>fetch("https://example.com' not in side_by_side  # the planted output's script is gone (its
    # source code still shows in the code cell, escaped); the browser below checks that nothing ran

    with browser() as playwright:
        base = serve(site)
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = chromium.new_page()
        problems = []
        page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        page.on("response", lambda r: problems.append(f"{r.status}: {r.url}") if r.status >= 400 else None)

        page.goto(base + "index.html")
        page.wait_for_load_state("networkidle")  # the search worker loads after the page: leaving earlier aborts it
        nav = page.eval_on_selector_all("nav.md-nav--primary a.md-nav__link[href]", "links => links.map(a => a.href)")
        pages = list(dict.fromkeys(url.split("#")[0] for url in nav))
        assert pages == [base + name for name in ("index.html", "00_tiny_world.html", "09_side_by_side.html")]
        def visit(url: str) -> None:
            page.goto(url)
            page.wait_for_load_state("networkidle")
            # maths: MathJax has turned every TeX formula of the page into typeset HTML
            page.wait_for_function(f"() => document.querySelectorAll('script[type^=\"math/tex\"]').length === "
                                   f"document.querySelectorAll('{TYPESET}').length", timeout=15_000)

        for url in pages:
            visit(url)
            images = page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => [i.src, i.naturalWidth, i.getBoundingClientRect().width])")
            assert images and all(natural > 0 and shown > 0 for _, natural, shown in images), (url, images)
            links = page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)")
            for link in {link.split("#")[0] for link in links if link.startswith(base)}:
                assert page.request.get(link).status == 200, (url, link)
        visit(base + "09_side_by_side.html")
        assert page.title() != "owned"  # the planted JavaScript output did not run
        visit(base + "00_tiny_world.html")
        assert page.locator(TYPESET).count() == 4  # three inline formulas and one display
        assert page.locator(".jp-OutputArea-output img").count() == 1  # the plot, with its size checked above
        chromium.close()
    assert not problems, problems

"""The website of ``make site`` (website/make_site.py), built from a few small executed notebooks and checked in a
real browser: Debian's Chromium, driven by Playwright. Every page loads with no console error and no failed request,
no broken link or image, every figure has a size, the navigation reaches every lesson, and the maths is typeset. The
pages read well on a wide and a narrow window: nothing wider than the main column (a wide table, a long line of code
or of output scrolls in its own box), no table cell on two lines, a figure enlarged by a click, and no folder of the
machine that built the site in any page.

Where Chromium is not installed (``apt-get install chromium``) the browser test says so and is skipped; in CI
(``CI`` set) it fails instead, since .ci/run installs it.
"""

import functools
import http.server
import json
import os
import re
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
from rrhf_lite.course.profiles import RUNS_ENV_VAR, get_profile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "website"))
import execution_record  # noqa: E402  (website/execution_record.py: a script, not part of the package)
import make_site  # noqa: E402  (website/make_site.py: likewise)

CHROMIUM = "/usr/bin/chromium"
MATHJAX_CACHE = REPO / "runs" / ".site-cache"  # installed once, shared by every test's site
TYPESET = ".MathJax_CHTML"  # what MathJax 2's CommonHTML output puts in place of a formula it typeset
# as root, headless, and without the background connections that a machine with no internet refuses
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WINDOWS = ({"width": 1280, "height": 900}, {"width": 420, "height": 800})  # a laptop's and a phone's
# Folders no published page may show: the build machine's (its repository, its runs) and any user's or temporary one
MACHINE_FOLDERS = (str(REPO), "/work/", "/home/", "/tmp/", "/root/")
# In the browser: the elements wider than their box among the page and its main column (nothing may overflow them)
OVERFLOWING = """() => [document.documentElement, document.querySelector('.md-content')]
    .filter(e => e.scrollWidth > e.clientWidth).map(e => e.className || e.tagName)"""
# the number of lines an element's text takes on the page
LINES = """e => { const range = document.createRange(); range.selectNodeContents(e);
    return new Set([...range.getClientRects()].map(r => Math.round(r.top))).size; }"""


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
    $RRHF_LITE_RUNS moves the stage cache: the caller sets it to ``runs/stage-cache``; the lessons' kernels inherit
    it). Lesson 00 says where it runs and builds a stage, as every lesson does; lesson 09 displays a table wider than
    the page and has a line of code and one of output longer than it."""
    profile = get_profile("tiny")
    assert profile.runs_path == runs / "stage-cache" / "tiny"
    notebooks, figures = runs / "tiny" / "notebooks", profile.runs_path / "figures"
    notebooks.mkdir(parents=True)
    figures.mkdir(parents=True)
    lesson(notebooks / "00_tiny_world.ipynb", "00", "The tiny world", [
        "from rrhf_lite.course.profiles import get_profile, shown\n"
        "from rrhf_lite.course.stages import build_or_load\n"
        "profile = get_profile('tiny')\n"
        "print(profile.name, '| runs in', shown(profile.runs_path))\n"
        "base = build_or_load('base', profile, ['seed'], lambda out: (out / 'weights.txt').write_text('w'))",
        "## Bradley-Terry\n\nA labeller prefers $y_c$ with probability $\\sigma(r_c - r_r)$:\n\n"
        "$$P(y_c \\succ y_r) = \\frac{1}{1 + e^{-(r_c - r_r)}}.$$\n\n"
        "The loss, in the fonts lessons use: $\\mathcal{L} = -\\mathbb{E}[\\log \\sigma(\\beta\\,\\Delta)]$.",
        "import matplotlib.pyplot as plt\nplt.plot([0, 1, 2], [0, 1, 4])\nplt.title('gold reward')\nplt.show()",
        "print('sanity check: ln 2 =', round(__import__('math').log(2), 4))"])
    lesson(notebooks / "09_side_by_side.ipynb", "09", "Side by side", [
        "import pandas as pd\npd.DataFrame({'gold_reward': [2.1, 3.0]}, index=['SFT', 'DPO'])",
        # a table of 12 columns, each a value with its interval, as lesson 09's
        "pd.DataFrame({f'measure_{i}': ['2.06 [1.95, 2.17]', '-0.08 [-0.18, 0.02]'] for i in range(12)}, "
        "index=pd.Index(['SFT', 'GRPO, gold reward'], name='method'))",
        "losses = {'sft': 1.25, 'reward': 0.69, 'rrhf': 0.41, 'pro': 0.52, 'dpo': 0.60, 'simpo': 0.58, 'ppo': 0.33, "
        "'grpo': 0.27, 'rloo': 0.29, 'online': 0.40}  # a line of code longer than the page is wide\n"
        "print(' | '.join(f'step {step}: loss {1 / (step + 1):.4f}' for step in range(30)))  # and of output",
        # outputs no lesson makes on purpose: HTML with a script, JavaScript (the site keeps their text versions)
        "from IPython.display import HTML, Javascript, display\n"
        "display(HTML('<b>planted</b><script>fetch(\"https://example.com/steal\")</script>'))\n"
        "display(Javascript('document.title = \"owned\"'))"])
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.figure(figsize=(16, 5))  # wide, as lesson 09's two panels and legend: too small to read in the column
    plt.plot([0, 1], [2, 3])
    plt.savefig(figures / "09_frontier.png")
    plt.close()
    # lesson 09's table, written by the function lesson 09 writes it with: SFT and one method, every column
    table = pd.DataFrame({column: [0.5, 1.0] for column in compare.COLUMNS}, index=pd.Index(["SFT", "DPO"],
                                                                                          name="method"))
    table.loc["DPO", ["gold_reward", "gold_reward_lo", "gold_reward_hi"]] = [3.0, 2.8, 3.2]
    compare.save_results(table, profile)
    execution_record.record_execution(notebooks, "tiny")
    return make_site.build_site("tiny", runs, cache=MATHJAX_CACHE, outputs=profile.runs_path)


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


@pytest.fixture(scope="module")
def small_site(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as env:
        env.setenv(RUNS_ENV_VAR, str(runs / "stage-cache"))
        yield build_small_site(runs)


def test_a_site_that_would_show_the_machines_folders_is_refused(small_site, tmp_path):
    """The builder's second line of defence: a lesson that printed an absolute path of this machine (here the runs
    folder) is refused, naming the page and the folder, and the site built before stays as it was."""
    runs = small_site.parents[1]
    notebooks = runs / "tiny" / "notebooks"
    original = (notebooks / "00_tiny_world.ipynb").read_bytes()
    nb = nbformat.reads(original.decode(), as_version=4)
    nb.cells[1].outputs.append(nbformat.v4.new_output("stream", name="stdout", text=f"runs in {runs}/stage-cache\n"))
    nbformat.write(nb, notebooks / "00_tiny_world.ipynb")
    execution_record.record_execution(notebooks, "tiny")
    before = (small_site / "index.html").read_bytes()
    try:
        with pytest.raises(make_site.MachinePaths, match=re.escape(f"00_tiny_world.html: {runs}")):
            make_site.build_site("tiny", runs, cache=MATHJAX_CACHE, outputs=get_profile("tiny").runs_path)
    finally:
        (notebooks / "00_tiny_world.ipynb").write_bytes(original)
        execution_record.record_execution(notebooks, "tiny")
    assert (small_site / "index.html").read_bytes() == before
    assert make_site.machine_paths(small_site, [REPO, runs]) == []


def test_the_results_table_reads_as_lesson_09_in_words():
    assert make_site.heading("gold_reward_vs_sft") == "gold reward vs SFT"
    assert make_site.heading("peak_memory_mb") == "peak memory MB"


def test_the_frontier_to_explore_escapes_names_and_draws_every_point_inside_its_axes():
    import frontier  # website/frontier.py

    methods = ["SFT", "best-of-4", "PPO <b>x</b>"]
    table = pd.DataFrame({column: [0.0, 0.2, 1.5] for column in compare.COLUMNS},
                         index=pd.Index(methods, name="method"))
    table["gold_reward"], table["gold_reward_lo"], table["gold_reward_hi"] = [1.0, 2.0, -0.5], [0.9, 1.8, -0.9], [
        1.1, 2.2, -0.1]
    table.loc["best-of-4", ["kl_lo", "kl_hi"]] = float("nan")  # best-of-n's KL is a bound: no interval
    drawn = frontier.frontier_svg(table)
    assert "<b>" not in drawn and "PPO &lt;b&gt;x&lt;/b&gt;" in drawn
    points = [(float(x), float(y)) for x, y in re.findall(r'<circle cx="([-\d.]+)" cy="([-\d.]+)"', drawn)]
    assert len(points) == 3
    assert all(frontier.LEFT <= x <= frontier.WIDTH - frontier.RIGHT and frontier.TOP <= y <= frontier.HEIGHT -
               frontier.BOTTOM for x, y in points), points
    assert points[2][1] > points[0][1] > points[1][1]  # a higher reward is drawn higher (SVG's y grows downwards)
    assert drawn.count('class="interval"') == 5  # best-of-n has its reward's interval only
    assert frontier.BEST_OF_N in drawn


def test_the_site_of_two_lessons_in_chromium(small_site):
    site = small_site
    # the home page: the lesson map linking the pages, the frontier, the results table with intervals
    home = (site / "index.html").read_text()
    assert "00_tiny_world.html" in home and "09_side_by_side.html" in home
    assert "assets/09_frontier.png" in home and 'class="dataframe results"' in home
    assert "3.00 [2.80, 3.20]" in home  # DPO's gold reward with its interval, as lesson 09 shows it
    assert home.count('class="frontier-toggle"') == 2 and "<svg" in home  # the frontier to explore: SFT and DPO
    assert "<th>gold reward vs SFT</th>" in home and "<td>0.5</td>" in home  # names in words; seconds to a tenth
    # a lesson says where it runs and which stage it built, relative to the runs folder's parent
    tiny_world = (site / "00_tiny_world.html").read_text()
    assert "tiny | runs in stage-cache/tiny" in tiny_world and "building stage 'base' -&gt; stage-cache/tiny/base/" in (
        tiny_world)
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
            text = page.evaluate("() => document.body.textContent")
            assert not [folder for folder in (*MACHINE_FOLDERS, str(small_site.parents[1])) if folder in text], url
        visit(base + "09_side_by_side.html")
        assert page.title() != "owned"  # the planted JavaScript output did not run
        visit(base + "00_tiny_world.html")
        assert page.locator(TYPESET).count() == 4  # three inline formulas and one display
        assert page.locator(".jp-OutputArea-output img").count() == 1  # the plot, with its size checked above
        check_layout(page, base)
        check_enlarging(page, base)
        check_frontier(page, base)
        chromium.close()
    assert not problems, problems


def check_layout(page, base: str) -> None:
    """On a wide and a narrow window: the home page and a lesson fit their main column, whatever is wider than it (a
    table, a line of code or of output) scrolls in its own box, and no table cell takes two lines."""
    for window in WINDOWS:
        page.set_viewport_size(window)
        page.goto(base + "index.html")
        assert page.evaluate(OVERFLOWING) == [], window
        cells = page.locator("table.results tbody th, table.results tbody td")
        assert cells.count() and all(cell.evaluate(LINES) == 1 for cell in cells.all()), window

        page.goto(base + "09_side_by_side.html")
        assert page.evaluate(OVERFLOWING) == [], window
        wide_table = page.locator(".jp-RenderedHTML", has_text="measure_11")
        long_code = page.locator(".highlight-ipynb", has_text="a line of code longer")
        long_output = page.locator(".jp-RenderedText pre", has_text="step 29")
        for box in (wide_table, long_code, long_output):  # wider than the column: each scrolls in its own box
            assert box.evaluate("e => e.scrollWidth > e.clientWidth && getComputedStyle(e).overflowX == 'auto'"), window
        cells = wide_table.locator("tbody th, tbody td")
        assert cells.count() == 2 * 13 and all(cell.evaluate(LINES) == 1 for cell in cells.all()), window
        assert long_output.evaluate(LINES) == 1, window  # output lines scroll as code does, unwrapped


def check_enlarging(page, base: str) -> None:
    """A click on the frontier shows it larger than in the column, on the same page (it is linked to its file for a
    browser without scripts); Escape closes it. A lesson's figure opens the same way, and a click closes it."""
    width = "i => i.getBoundingClientRect().width"
    page.set_viewport_size(WINDOWS[0])
    page.goto(base + "index.html")
    in_column = page.locator("img.zoomable").evaluate(width)
    page.locator("img.zoomable").click()
    assert page.url == base + "index.html" and page.locator(".lightbox img").evaluate(width) > 1.5 * in_column
    page.keyboard.press("Escape")
    assert page.locator(".lightbox").count() == 0
    page.goto(base + "00_tiny_world.html")
    page.locator(".jp-RenderedImage img").click()
    page.locator(".lightbox img").click()
    assert page.locator(".lightbox").count() == 0


def check_frontier(page, base: str) -> None:
    """The home page's frontier to explore: pointing at DPO's point reads out its values with their intervals (as
    the table shows them); DPO's button hides its point and its intervals, a second click shows them again."""
    page.goto(base + "index.html")
    readout = page.locator(".frontier-readout")
    point = page.locator('.frontier g.method[data-method="DPO"]')
    point.hover()
    assert readout.text_content() == "DPO: gold reward 3.00 [2.80, 3.20], KL 1.00 [1.00, 1.00], proxy reward 1.00 " \
                                     "[1.00, 1.00]"
    page.locator('.frontier g.method[data-method="SFT"]').focus()  # the keyboard's way: Tab to a point
    assert readout.text_content().startswith("SFT: gold reward 0.50")
    button = page.locator('.frontier-toggle[data-method="DPO"]')
    drawn = page.locator('.frontier svg [data-method="DPO"]')  # its point and its intervals
    displayed = "e => getComputedStyle(e).display != 'none'"
    assert drawn.count() == 2 and all(element.evaluate(displayed) for element in drawn.all())
    button.click()
    assert button.get_attribute("aria-pressed") == "false" and not any(e.evaluate(displayed) for e in drawn.all())
    assert page.locator('.frontier g.method[data-method="SFT"]').is_visible()  # the other method stays
    button.click()
    assert button.get_attribute("aria-pressed") == "true" and point.is_visible()

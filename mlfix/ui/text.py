"""Text from the data or from a reviewer, made safe to show in Streamlit and Plotly.

Labels, sample ids, file names, reviewer names, view names and error messages that quote them are
written by someone else: a reviewer named ``[Session expired: sign in](https://evil.example/login)``
must show as that text for the other reviewers, not as a link. Almost every Streamlit element that
shows text renders Markdown: ``st.markdown``, ``st.write``, ``st.caption``, ``st.info``/``warning``/
``error``/``success``, titles and headers, ``st.toast``, widget labels and ``help=``, expander and
tab labels, image captions, ``st.progress`` text. Plotly renders a subset of HTML (``<a href>``,
``<br>``, ``<b>``) in axis ticks, hover and text. So every such value goes through one of:

- :func:`plain`: for Markdown. A backslash (CommonMark's escape) goes before every character that
  can open a link, an image, HTML, code, emphasis, LaTeX or a Streamlit directive (``[ ] < > ` * _
  ~ $ & | \\``, ``:`` before a name as in ``:red[``, the ``/`` of ``:material/home:``) and before
  what starts a block at the start of the text (``#``, ``>``, ``-``, ``+``, ``=``, ``1.``); a word
  joiner breaks what GFM links by itself (``https://``, ``www.``, ``a@b.org``); invisible controls
  that reorder or hide text (right-to-left overrides, line breaks) show as ``[U+202E]`` or a space.
  Other punctuation stays as it is, so messages still read naturally in the page's source.
- :func:`code`: the same value as inline code (a fence of backticks longer than any inside it).
- :func:`html_text`: for Plotly text (HTML entities; controls as in :func:`plain`).

Elements that never interpret their text (``st.text``, ``st.code``, ``st.dataframe`` cells, selectbox
and multiselect options) take the raw value.

Example:
    >>> print(plain("[Session expired: sign in](https://evil.example/login)").replace(WORD_JOINER, "+"))
    \\[Session expired: sign in\\](https:+//evil.example/login)
    >>> code("a`b"), html_text("<b>cat</b>")
    ('``a`b``', '&lt;b&gt;cat&lt;/b&gt;')
"""

from __future__ import annotations

import html
import re

WORD_JOINER = "\u2060"  # invisible, no width: breaks a pattern without changing what is seen
# Characters that reorder or hide the text around them (bidi embeddings, overrides and isolates,
# marks), and the line and paragraph separators.
_HIDDEN = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029")
_SPACES = frozenset("\t\n\r\v\f")
_ALWAYS = frozenset("\\`*_[]<>~$&|")
_NAMED_COLON = re.compile(r":(?=[\w+/-])")  # :red[...], :material/home:, :smile:
_ICON_SLASH = re.compile(r"(?<=\w)/(?=\w+:)")  # Streamlit finds :material/home: before Markdown's escapes
_BLOCK_START = re.compile(r"^(\s*)([#>+=-]|\d+(?=[.)]))")  # a heading, quote, list or rule
# What GFM links without any Markdown around it: a scheme's "://", "www.", and e-mail addresses.
_AUTOLINK = re.compile(r"(?<=:)(?=//)|(?<=www)(?=\.)|(?<=@)", re.IGNORECASE)


def visible(text: object) -> str:
    """``str(text)`` with line breaks and tabs as spaces and other controls and bidi overrides as ``[U+XXXX]``.

    >>> visible("cat\\u202egnp.exe"), visible("two\\nlines")
    ('cat[U+202E]gnp.exe', 'two lines')
    """
    value = "" if text is None else str(text)
    return "".join(" " if ch in _SPACES else f"[U+{ord(ch):04X}]" if ch in _HIDDEN or _is_control(ch) else ch
                   for ch in value)


def _is_control(ch: str) -> bool:
    code_point = ord(ch)
    return code_point < 0x20 or 0x7F <= code_point < 0xA0


def plain(text: object) -> str:
    """``text`` as Markdown that shows exactly these characters: no link, image, HTML or formatting.

    Put the result anywhere in a Markdown string (inside ``**...**`` too), but not inside backticks:
    use :func:`code` for that.

    >>> print(plain("**bold** <img src=x>"), plain("# 1. not a heading"), plain("1. not a list"))
    \\*\\*bold\\*\\* \\<img src=x\\> \\# 1. not a heading 1\\. not a list
    """
    unlinked = _AUTOLINK.sub(WORD_JOINER, visible(text))
    escaped = "".join("\\" + ch if ch in _ALWAYS else ch for ch in unlinked)
    escaped = _ICON_SLASH.sub(r"\\/", _NAMED_COLON.sub(r"\\:", escaped))
    return _BLOCK_START.sub(_escape_block_start, escaped, count=1)


def _escape_block_start(match: re.Match) -> str:
    spaces, mark = match.groups()
    return f"{spaces}{mark}\\" if mark.isdigit() else f"{spaces}\\{mark}"


def code(text: object) -> str:
    """``text`` as a Markdown inline code span (shown in monospace, never interpreted).

    >>> code("/data/cats"), code("``x"), code("")
    ('`/data/cats`', '``` ``x ```', '')
    """
    value = visible(text)
    if not value:
        return ""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", value)), default=0) + 1)
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def html_text(text: object) -> str:
    """``text`` for Plotly's HTML-like text (axis ticks, hover, bar text): entities for ``<>&"'``.

    >>> html_text('<a href="javascript:alert(1)">x</a>')
    '&lt;a href=&quot;javascript:alert(1)&quot;&gt;x&lt;/a&gt;'
    """
    return html.escape(visible(text), quote=True)

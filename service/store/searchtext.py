"""The search query language, and what a text's words are: the same on SQLite and PostgreSQL.

Words (all must occur), ``"a phrase"`` (those words, in that order), and a ``prefix*`` (a
word or phrase whose last word starts so). Nothing else is an operator: ``OR``, ``-`` or
``NEAR`` are plain words or punctuation. ``parse`` turns the user's text into ``Term``s of
words made only of letters and digits, and each backend's query is built from those words
alone (quoted for FTS5 ``MATCH``, quoted lexemes for ``to_tsquery``), so no user text ever
reaches either query parser: a query that parses cannot fail in the database, and one that
does not parse is a ``QueryError`` with the reason (the API answers 400).

Both backends see a text as the same words: runs of letters and digits, case-folded, with no
stemming and no stop words (SQLite: FTS5's ``unicode61`` tokenizer, diacritics kept;
PostgreSQL: the ``simple`` configuration over the text with every other character made a
space), so one query finds the same segments on either. ``snippet`` marks them the same way.
The SQL around these lives in service/store/search.py.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

MAX_QUERY_CHARS = 200
MAX_TERMS = 10
MAX_WORDS = 32  # words over all terms: bounds the backend's work for one query
MIN_PREFIX_CHARS = 2  # `a*` would match most of the archive
SNIPPET_WORDS = 24  # a snippet shows about this many words around the first match

_WORD = re.compile(r"[^\W_]+")  # letters and digits: what both backends call a word


class QueryError(ValueError):
    """The query cannot be searched for; the message says why (a 400's reason)."""


@dataclass(frozen=True)
class Term:
    """One search term: its words (in order), the last one a prefix when ``prefix``."""

    words: tuple[str, ...]
    prefix: bool = False


def parse(query: str) -> tuple[Term, ...]:
    """The terms of ``query``, or a QueryError saying what is wrong with it."""
    if len(query) > MAX_QUERY_CHARS:
        raise QueryError(f"the query is longer than {MAX_QUERY_CHARS} characters")
    if query.count('"') % 2:
        raise QueryError('unbalanced quote: a phrase is written "like this"')
    terms: list[Term] = []
    pieces = query.split('"')  # even ones are outside quotes (words), odd ones phrases
    for i, piece in enumerate(pieces):
        if i % 2:
            if not _WORD.search(piece):
                raise QueryError("empty phrase: put words between the quotes")
            terms.append(_term(piece, pieces[i + 1].startswith("*")))
            continue
        chunks = piece.split()
        if i and chunks and piece.startswith("*"):  # the `*` after a phrase was used above
            chunks[0] = chunks[0][1:]
        for chunk in chunks:
            bare = chunk[:-1] if chunk.endswith("*") else chunk
            if "*" in bare:
                raise QueryError(f"'*' may only end a word, as in meet*: {chunk!r}")
            if _WORD.search(bare):
                terms.append(_term(bare, chunk.endswith("*")))
            elif chunk.endswith("*"):
                raise QueryError(f"a prefix needs {MIN_PREFIX_CHARS} or more letters: {chunk!r}")
            # Punctuation alone (`-`, `&`) is no word on either backend: skipped.
    terms = list(dict.fromkeys(terms))
    if not terms:
        raise QueryError("the query has no words to search for")
    if len(terms) > MAX_TERMS:
        raise QueryError(f"more than {MAX_TERMS} terms")
    if sum(len(t.words) for t in terms) > MAX_WORDS:
        raise QueryError(f"more than {MAX_WORDS} words")
    return tuple(terms)


def _term(raw: str, prefix: bool) -> Term:
    words = tuple(w.lower() for w in _WORD.findall(raw))
    if prefix and len(words[-1]) < MIN_PREFIX_CHARS:
        raise QueryError(f"a prefix needs {MIN_PREFIX_CHARS} or more letters: {raw}*")
    return Term(words, prefix)


def fts5_match(terms: tuple[Term, ...]) -> str:
    """An FTS5 MATCH expression: each term a quoted phrase (implicitly ANDed). The words
    hold letters and digits only, so none can close a quote or be read as an operator."""
    return " ".join(f'"{" ".join(t.words)}"' + ("*" if t.prefix else "") for t in terms)


def tsquery(terms: tuple[Term, ...]) -> str:
    """A ``to_tsquery('simple', ...)`` expression of quoted lexemes joined by ``&`` and
    ``<->`` (followed by); the words hold letters and digits only, so none is an operator."""
    return " & ".join(
        "(" + " <-> ".join(f"'{w}'" for w in t.words) + (":*" if t.prefix else "") + ")"
        for t in terms
    )


def snippet(text_: str, terms: tuple[Term, ...]) -> str:
    """``text_`` as HTML (escaped), cut to about SNIPPET_WORDS words around the first match,
    with every word that matches a term wrapped in ``<mark>``. Done here, not by the
    backend, so it is the same on both (PostgreSQL's ts_headline also drops tag-like text)."""
    exact = {w for t in terms for w in (t.words[:-1] if t.prefix else t.words)}
    prefixes = tuple(t.words[-1] for t in terms if t.prefix)
    words = list(_WORD.finditer(text_))

    def matches(word: str) -> bool:
        w = word.lower()
        return w in exact or w.startswith(prefixes)

    first = next((i for i, m in enumerate(words) if matches(m.group())), 0)
    lo = max(0, first - SNIPPET_WORDS // 3)
    hi = min(len(words), lo + SNIPPET_WORDS)
    begin = words[lo].start() if lo > 0 else 0
    end = words[hi - 1].end() if hi < len(words) else len(text_)
    out, pos = [], begin
    for m in words[lo:hi]:
        if matches(m.group()):
            out += [html.escape(text_[pos : m.start()]), f"<mark>{html.escape(m.group())}</mark>"]
            pos = m.end()
    out.append(html.escape(text_[pos:end]))
    return ("…" if begin > 0 else "") + "".join(out) + ("…" if end < len(text_) else "")

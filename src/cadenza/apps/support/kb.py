"""The support knowledge base: Markdown articles with front matter, searched with BM25."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Article", "Hit", "KnowledgeBase", "tokenize"]

_WORD = re.compile(r"[a-z0-9]+")
# Words that say nothing about which article fits (kept short on purpose: "not", "can't"
# and the like carry meaning in support questions and stay in).
_STOP = frozenset(
    "a an the and or of to in on for with at by from is are was were be been am i me my we our "
    "you your it its this that these those do does did how what when where which who why "
    "can could would should will shall may might please hi hello thanks thank there here "
    "have has had so if then than as into about just get got".split()
)


def _stem(word: str) -> str:
    for suffix in ("ing", "ies", "ed", "es", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def tokenize(text: str) -> list[str]:
    """Lower-cased, stemmed content words."""
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP]


@dataclass(frozen=True, slots=True)
class Article:
    """One help-centre article."""

    id: str
    """Stable id such as KB-101."""
    title: str
    """The article's title."""
    tags: tuple[str, ...]
    """Search keywords."""
    body: str
    """Markdown text without the front matter."""
    path: str
    """Where it was loaded from."""


@dataclass(frozen=True, slots=True)
class Hit:
    """A search result."""

    article: Article
    """The article found."""
    score: float
    """BM25 score (higher is better)."""


@dataclass
class KnowledgeBase:
    """Articles and a BM25 index of their sections (k1=1.2, b=0.75).

    Each `##` section is indexed on its own, with its heading and the article's title and
    tags (weighing three times): a long article no longer wins on incidental words spread over
    unrelated sections. An article scores as its best section.
    """

    articles: list[Article]
    """Every article, in file-name order."""
    _docs: list[tuple[int, Counter[str]]] = field(default_factory=lambda: [], repr=False)
    _df: Counter[str] = field(default_factory=lambda: Counter(), repr=False)
    _avg: float = 0.0

    def __post_init__(self) -> None:
        for i, a in enumerate(self.articles):
            about = tokenize(f"{a.title} {' '.join(a.tags)}")
            for heading, text in _sections(a):
                terms = Counter(tokenize(f"{heading} {text}"))
                for t in about:
                    terms[t] += 3
                self._docs.append((i, terms))
                self._df.update(terms.keys())
        self._avg = sum(sum(d.values()) for _, d in self._docs) / max(len(self._docs), 1)

    @classmethod
    def load(cls, folder: str | Path) -> KnowledgeBase:
        """Every `*.md` article of `folder`."""
        articles = [_parse(p) for p in sorted(Path(folder).glob("*.md"))]
        if not articles:
            raise FileNotFoundError(f"no *.md articles in {folder}")
        return cls(articles)

    def best_section(self, article: Article, query: str) -> tuple[str, str]:
        """The (heading, text) of the article section that best matches `query`.

        Sections are the `##` parts of the article; a question about one case of a topic
        ("didn't get the reset email") gets that case, not the whole article.
        """
        sections = _sections(article)
        terms = set(tokenize(query))

        def overlap(section: tuple[str, str]) -> float:
            words = tokenize(f"{section[0]} {section[0]} {section[1]}")
            if not words:
                return 0.0
            hits = sum(1 for w in words if w in terms)
            idf = sum(math.log(1 + len(self._docs) / (1 + self._df[w])) for w in set(words) & terms)
            return idf + hits / len(words)

        return max(sections, key=overlap)

    def get(self, article_id: str) -> Article | None:
        """The article with that id."""
        return next((a for a in self.articles if a.id == article_id), None)

    def search(self, query: str, k: int = 3) -> list[Hit]:
        """The `k` best articles for `query`, best first (only those sharing a term)."""
        n = len(self._docs)
        terms = set(tokenize(query))
        best: dict[int, float] = {}
        for i, doc in self._docs:
            length = sum(doc.values())
            score = 0.0
            for t in terms:
                tf = doc.get(t, 0)
                if not tf:
                    continue
                idf = math.log(1 + (n - self._df[t] + 0.5) / (self._df[t] + 0.5))
                score += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * length / self._avg))
            if score > best.get(i, 0.0):
                best[i] = score
        scored = [Hit(self.articles[i], s) for i, s in best.items()]
        scored.sort(key=lambda h: h.score, reverse=True)
        return scored[:k]


def _sections(article: Article) -> list[tuple[str, str]]:
    """(heading, text) of each `##` section; the text before the first one is the intro."""
    out: list[tuple[str, str]] = []
    heading, lines = "", list[str]()
    for line in article.body.splitlines():
        if line.startswith("# "):
            continue
        if line.startswith("## "):
            if "\n".join(lines).strip():
                out.append((heading, "\n".join(lines).strip()))
            heading, lines = line[3:].strip(), []
        elif not line.startswith("**Still stuck?**"):
            lines.append(line)
    if "\n".join(lines).strip():
        out.append((heading, "\n".join(lines).strip()))
    return out or [("", article.body)]


def _parse(path: Path) -> Article:
    text = path.read_text(encoding="utf-8")
    meta: dict[str, str] = {}
    body = text
    if text.startswith("---"):
        head, _, body = text[3:].partition("\n---")
        for line in head.strip().splitlines():
            key, _, value = line.partition(":")
            meta[key.strip()] = value.strip()
    tags = tuple(t.strip() for t in meta.get("tags", "").strip("[]").split(",") if t.strip())
    return Article(
        meta.get("id", path.stem), meta.get("title", path.stem), tags, body.strip(), str(path)
    )

"""The project's one text reader: every free text (a concept's text or display, a Condition or
Observation note, a clinical note, a report's conclusion) is read here.

Finding the words: each value set's text vocabularies (synonyms, vetoes, SNOMED CT fallback words)
are compiled into ONE pattern run once per distinct text. It is also the fast prefilter: a text
without a candidate term never reaches the NLP.

Reading them as a clinician does: medspaCy on a blank spaCy English pipeline (no model): sentences,
sections (medspaCy's sectionizer) and ConText (negation, someone else, historical, hypothetical,
uncertain), with medspaCy's own rules plus the project's additions in ``text_context.json``. Only
the candidate sentences of a text (and the section headings before them) are parsed, and readings
are cached by a hash of the text, never by a resource id (ids repeat across EHRs and tenants).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

RULES_FILE = Path(__file__).parent / "text_context.json"
_WORD_START = r"(?<![a-z0-9])"  # every phrase starts a word


# ---------------------------------------------------------------- finding the words

def phrase_pattern(phrase: str) -> str:
    """A trailing '*' is any word ending; a leading '*' (fallback words only) any word beginning."""
    phrase = phrase.strip().lower()
    wildcard, leading = phrase.endswith("*"), phrase.startswith("*")
    words = [re.escape(w) for w in re.split(r"[\s\-]+", phrase.strip("*")) if w]
    body = (r"[a-z]*" if leading else "") + r"[\s\-]+".join(words) + (r"[a-z]*" if wildcard else "")
    return rf"{_WORD_START}{body}(?![a-z0-9])"


def phrases(values) -> list[str]:
    return [p for p in values or () if isinstance(p, str) and p.strip()]


def any_of(values) -> re.Pattern | None:
    values = phrases(values)
    return re.compile("|".join(phrase_pattern(p) for p in values)) if values else None


SHORT_TEXT = 512  # texts up to this length (displays, short notes) are memoised in the large cache
SHORT_TEXTS_CACHED = 8192
LONG_TEXTS_CACHED = 256  # long notes: a patient's notes, each read by every value set within one request


class Vocabularies:
    """Several named phrase lists behind ONE compiled pattern, run once per distinct text.

    The union pattern finds every position where a phrase of any list starts (a lookahead, so
    overlapping phrases of different lists are all seen); only there is each list's own pattern
    tried, and its non-overlapping hits are read off in order, exactly as that list's own
    ``finditer`` would give them. Texts are memoised in bounded LRU caches keyed on the text.
    """

    def __init__(self, vocabularies: Mapping[str, list[str]]):
        self.patterns = {key: any_of(values) for key, values in vocabularies.items() if phrases(values)}
        bodies = [phrase_pattern(p).removeprefix(_WORD_START)
                  for values in vocabularies.values() for p in phrases(values)]
        # The shared word-start guard is factored out, so each alternative starts with a literal
        # the regex engine can skip on at once.
        self.union = re.compile(_WORD_START + "(?=" + "|".join(bodies) + ")") if bodies else None
        self._short = lru_cache(maxsize=SHORT_TEXTS_CACHED)(self._analyse)
        self._long = lru_cache(maxsize=LONG_TEXTS_CACHED)(self._analyse)

    def hits(self, text: str) -> TextHits:
        return (self._short if len(text) <= SHORT_TEXT else self._long)(text)

    def _analyse(self, text: str) -> TextHits:
        lowered = text.lower()
        starts = [m.start() for m in self.union.finditer(lowered)] if self.union is not None else []
        return TextHits(self, text, lowered, starts)


class TextHits:
    """One text's phrase hits per vocabulary (computed on first use), per-value-set verdicts, and
    its reading (the mentions with their ConText modifiers, computed once, when first asked)."""

    __slots__ = ("_vocabularies", "text", "lowered", "_starts", "_hits", "verdicts", "_mentions")

    def __init__(self, vocabularies: Vocabularies, text: str, lowered: str, starts: list[int]):
        self._vocabularies = vocabularies
        self.text, self.lowered, self._starts = text, lowered, starts
        self._hits: dict[str, list[tuple[int, int]]] = {}
        self.verdicts: dict[str, object] = {}  # value set id (or id#fallback) -> its answer
        self._mentions: dict[tuple[str, int, int], Mention] | None = None

    def of(self, key: str) -> list[tuple[int, int]]:
        """The (start, end) spans the vocabulary's own pattern finds, in order, not overlapping."""
        found = self._hits.get(key)
        if found is None:
            found = []
            pattern = self._vocabularies.patterns.get(key)
            if pattern is not None and self._starts:
                cursor = 0
                for start in self._starts:
                    if start < cursor:
                        continue
                    hit = pattern.match(self.lowered, start)
                    if hit is not None:
                        found.append((start, hit.end()))
                        cursor = hit.end()
            self._hits[key] = found
        return found

    def mention(self, key: str, start: int, end: int) -> Mention:
        """The reading of the hit (start, end) of vocabulary `key` ("<value set>#synonyms")."""
        if self._mentions is None:
            targets = [(s, e, k) for k in self._vocabularies.patterns if k.endswith(("#synonyms", "#fallback"))
                       for s, e in self.of(k)]
            self._mentions = {(m.value_set, m.start, m.end): m for m in read_context(self.text, targets)}
        found = self._mentions.get((key.split("#")[0], start, end))
        return found if found is not None else Mention(key.split("#")[0], start, end, self.text[start:end], start)


# ---------------------------------------------------------------- reading them

@dataclass(frozen=True)
class Mention:
    """A vocabulary phrase in a text, with what the sentence around it says about it."""

    value_set: str
    start: int
    end: int
    sentence: str  # the sentence holding it, as written
    sentence_start: int  # where that sentence starts in the text
    section: str | None = None  # medspaCy section category: "family_history", "past_medical_history", ...
    negated: bool = False
    family: bool = False  # about someone else
    historical: bool = False
    hypothetical: bool = False  # conditional, safety-netting, a test planned to look for it
    uncertain: bool = False  # possible, suspected, ?, r/o

    @property
    def words(self) -> str:
        return self.sentence[self.start - self.sentence_start:self.end - self.sentence_start]


@cache
def rules() -> dict:
    return json.loads(RULES_FILE.read_text(encoding="utf-8"))


def counts(mention: Mention, *, note: bool = True) -> bool:
    """Whether a mention is a current finding of the patient under the project's rules (issue 12).

    In notes and free-text fields (``note=True``) a historical mention counts only for cancer, an
    uncertain one only for the emergency flags and cancer. A concept's own text or display
    (``note=False``: "Suspected cauda equina syndrome", "History of breast cancer") is qualified by
    the resource's status and dates instead, so only negation, someone else and hypotheticals veto it.
    """
    if mention.negated or mention.family or mention.hypothetical:
        return False
    if not note:
        return True
    allowed = rules()["counts"]
    if mention.historical and mention.value_set not in allowed["historical"]:
        return False
    return not (mention.uncertain and mention.value_set not in allowed["uncertain"])


_SEGMENT_BREAK = re.compile(r"\n\s*\n|\n(?=\s*(?:[-*•·]|\d+[.)]|\[|[A-Z][A-Za-z /&()]{1,40}:))|(?<=[.!?;:])\s*\n|\r")
_LONG_LINE = 400
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\[(])")
_HEADING = re.compile(r"^\s*([A-Za-z][A-Za-z /&()\-]{1,48}:)")
_SHOUTED = re.compile(r"^\s*[A-Z][A-Z /&()\-]{2,48}\s*$")


def _segments(text: str) -> list[tuple[int, int]]:
    """(start, end) of the text's lines and sentences, cheaply: a wrapped line stays with its sentence."""
    out: list[tuple[int, int]] = []
    start = 0
    for brk in _SEGMENT_BREAK.finditer(text):
        out.append((start, brk.start()))
        start = brk.end()
    out.append((start, len(text)))
    split: list[tuple[int, int]] = []
    for a, b in out:
        if b - a <= _LONG_LINE:
            split.append((a, b))
            continue
        cursor = a
        for end in _SENTENCE_END.finditer(text, a, b):
            split.append((cursor, end.start()))
            cursor = end.end()
        split.append((cursor, b))
    return [(a, b) for a, b in split if text[a:b].strip()]


def _excerpt(text: str, targets: list[tuple[int, int, str]]) -> list[tuple[int, int]]:
    """The pieces of the text to parse: the segments holding a target, each with the section
    headings before it (so the sectionizer still knows the section), in order."""
    segments = _segments(text)
    pieces: list[tuple[int, int]] = []
    wanted = sorted((s, e) for s, e, _ in targets)
    i = 0
    for a, b in segments:
        holds = False
        while i < len(wanted) and wanted[i][0] < b:
            holds = holds or wanted[i][1] > a
            i += 1
        if holds:
            if pieces and pieces[-1][1] >= a:
                pieces[-1] = (pieces[-1][0], max(b, pieces[-1][1]))  # a target across two segments
            else:
                pieces.append((a, b))
            # a target running past this segment's end keeps it joined with the next
            if i and wanted[i - 1][1] > b:
                pieces[-1] = (pieces[-1][0], wanted[i - 1][1])
            continue
        heading = _HEADING.match(text, a, b)
        if heading is not None and len(heading.group(1).split()) <= 6:
            pieces.append((a + heading.start(1), a + heading.end(1)))
        elif _SHOUTED.match(text, a, b):
            pieces.append((a, b))
    merged: list[tuple[int, int]] = []
    for a, b in sorted(pieces):
        if merged and a < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


_lock = threading.Lock()
READINGS_CACHED = 4096
_readings: OrderedDict[str, tuple[Mention, ...]] = OrderedDict()


def read_context(text: str, targets: list[tuple[int, int, str]]) -> tuple[Mention, ...]:
    """The mentions of ``targets`` ((start, end, vocabulary key) in ``text``) with their modifiers.

    Cached by a hash of the text and its targets; only the pieces of the text holding a target are parsed.
    """
    if not targets:
        return ()
    key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest() + hashlib.sha256(
        repr(sorted(targets)).encode()).hexdigest()[:16]
    with _lock:
        found = _readings.get(key)
        if found is not None:
            _readings.move_to_end(key)
            return found
        found = _parse(text, targets)
        _readings[key] = found
        if len(_readings) > READINGS_CACHED:
            _readings.popitem(last=False)
    return found


def _parse(text: str, targets: list[tuple[int, int, str]]) -> tuple[Mention, ...]:
    from spacy.tokens import Span

    nlp = _pipeline()
    pieces = _excerpt(text, targets)
    parts, offsets, cursor = [], [], 0
    for a, b in pieces:
        offsets.append((cursor, a, b))
        parts.append(text[a:b].replace("\n", " ").replace("\r", " "))
        cursor += (b - a) + 1
    excerpt = "\n".join(parts)

    def to_excerpt(pos: int) -> int | None:
        for at, a, b in offsets:
            if a <= pos <= b:
                return at + pos - a
        return None

    def to_text(pos: int) -> int:
        for at, a, b in reversed(offsets):
            if pos >= at:
                return a + min(pos - at, b - a)
        return 0

    headings = [to_excerpt(a) for a, b in pieces if _HEADING.match(text, a, b) or _SHOUTED.match(text, a, b)]
    doc = nlp.make_doc(excerpt)
    spans, origin = [], {}
    for start, end, key in targets:
        s, e = to_excerpt(start), to_excerpt(end)
        span = doc.char_span(s, e, label=key.split("#")[0], alignment_mode="expand") if s is not None \
            and e is not None else None
        if span is not None and len(span):
            spans.append(span)
            origin[(span.start, span.end, span.label_)] = origin.get((span.start, span.end, span.label_), []) + [
                (start, end)]
    doc.spans[SPAN_GROUP] = [Span(doc, s.start, s.end, label=s.label_) for s in spans]
    for _, component in nlp.pipeline:
        doc = component(doc)
    meaning = rules()["sections"]["meaning"]
    out = []
    for span in doc.spans[SPAN_GROUP]:
        section = span._.section_category
        title = span._.section_title
        # A section's meaning lasts until the next heading of any kind, known to the sectionizer or not:
        # "Neuro: new saddle numbness" after a past-history block is not history.
        if section and title is not None and any(title.start_char < h <= span.start_char for h in headings):
            section = None
        effect = meaning.get(section or "")
        sentence = span.sent
        sentence_start = to_text(sentence.start_char)
        sentence_text = text[sentence_start:to_text(sentence.end_char)]
        for start, end in origin.get((span.start, span.end, span.label_), []):
            out.append(Mention(
                value_set=span.label_, start=start, end=end,
                sentence=sentence_text if sentence_start <= start and end <= sentence_start + len(sentence_text)
                else text[start:end], sentence_start=sentence_start if sentence_start <= start else start,
                section=section, negated=bool(span._.is_negated),
                family=bool(span._.is_family) or effect == "family",
                historical=bool(span._.is_historical) or effect == "historical",
                hypothetical=bool(span._.is_hypothetical) or effect == "hypothetical",
                uncertain=bool(span._.is_uncertain)))
    return tuple(out)


SPAN_GROUP = "lbp_targets"


@cache
def _pipeline():
    """Blank English spaCy with sentence splitting, medspaCy's sectionizer and ConText (loaded once)."""
    for noisy in ("PyRuSH", "medspacy", "medspacy_quickumls"):
        _silence(noisy)
    warnings.filterwarnings("ignore", message=r"\[W036\]")  # medspaCy's matchers without patterns of one kind
    import spacy
    from medspacy.context import ConText, ConTextRule
    from medspacy.section_detection import Sectionizer, SectionRule

    nlp = spacy.blank("en")
    # Sentences end at . and ! (not at ?: "?cauda equina" puts it before its term) and at the line
    # breaks the excerpt puts between pieces. medspaCy's PyRuSH splitter measured 3.3 ms per short
    # sentence and 137 ms per 4 KB note here, against 0.5 ms and 14 ms: the hook's time budget decides.
    nlp.add_pipe("sentencizer", config={"punct_chars": [".", "!", "\n"]})
    data = rules()
    sectionizer = Sectionizer(nlp, rules="default", input_span_type="group", span_group_name=SPAN_GROUP)
    removed = set(data["sections"]["remove"])
    kept = [r for r in sectionizer.rules if r.literal not in removed]
    sectionizer = Sectionizer(nlp, rules=None, input_span_type="group", span_group_name=SPAN_GROUP)
    sectionizer.add(kept + [SectionRule(r["literal"], r["category"]) for r in data["sections"]["add"]])
    context = ConText(nlp, rules="default", input_span_type="group", span_group_name=SPAN_GROUP,
                      prune_on_target_overlap=True)
    removed = set(data["context"]["remove"])
    kept = [r for r in context.rules if r.literal not in removed]
    context = ConText(nlp, rules=None, input_span_type="group", span_group_name=SPAN_GROUP,
                      prune_on_target_overlap=True)
    context.add(kept + [ConTextRule(r["literal"], r["category"], direction=r.get("direction", "BIDIRECTIONAL"),
                                    pattern=r.get("pattern"), max_scope=r.get("max_scope"))
                        for r in data["context"]["add"]])
    return _Pipeline(nlp, [("sentencizer", nlp.get_pipe("sentencizer")), ("sectionizer", sectionizer),
                           ("context", context)])


class _Pipeline:
    """The spaCy tokenizer and the components, run in order on a Doc whose targets are already set."""

    def __init__(self, nlp, pipeline):
        self.nlp, self.pipeline = nlp, pipeline

    def make_doc(self, text: str):
        return self.nlp.make_doc(text)


def _silence(name: str) -> None:
    """medspaCy's sentence splitter logs every token at DEBUG through loguru: never let note text reach a log."""
    logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from loguru import logger
    except ImportError:  # pragma: no cover - loguru comes with medspaCy
        return
    logger.disable(name)


def reload() -> None:
    """Forget the rules, the pipeline and every reading (after the rules file changed)."""
    rules.cache_clear()
    _pipeline.cache_clear()
    with _lock:
        _readings.clear()


# ---------------------------------------------------------------- the public surface

def _shared():
    from .terminology import shared_vocabularies  # the value sets' vocabularies (terminology imports this module)

    return shared_vocabularies()


def mentions(text: str) -> tuple[Mention, ...]:
    """Every value-set phrase in ``text`` with its modifiers, in order."""
    if not isinstance(text, str) or not text.strip():
        return ()
    hits = _shared().hits(text)
    keys = [k for k in hits._vocabularies.patterns if k.endswith("#synonyms")]
    found = [hits.mention(k, s, e) for k in keys for s, e in hits.of(k)]
    return tuple(sorted(found, key=lambda m: (m.start, m.value_set)))


def find(text: str, value_set: str, *, note: bool = True) -> Mention | None:
    """The first mention of ``value_set`` in ``text`` that counts (see ``counts``), or None."""
    from .terminology import value_set as load

    found = load(value_set).mention_in(text, note=note)
    return found


QUOTE_LIMIT = 120
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+!<>|~])")


def escape(text: str) -> str:
    """Text that renders as itself in Markdown: no emphasis, links, images, HTML or headings."""
    return _MARKDOWN.sub(r"\\\1", text)


def quote(mention: Mention, limit: int = QUOTE_LIMIT) -> str:
    """The mention's sentence, at most about ``limit`` characters around the matched words, escaped,
    the matched words in bold."""
    sentence = " ".join(mention.sentence.split()) if mention.sentence else mention.words
    words = " ".join(mention.words.split())
    at = sentence.lower().find(words.lower()) if words else -1
    if at < 0:
        return f"**{escape(words)}**" if words else escape(sentence[:limit])
    before, after = sentence[:at], sentence[at + len(words):]
    room = max(limit - len(words), 0)
    keep_before = min(len(before), room // 2 if len(after) > room - room // 2 else room - len(after))
    keep_after = min(len(after), room - keep_before)
    head = before[len(before) - keep_before:]
    tail = after[:keep_after]
    if keep_before < len(before):
        head = "…" + head.split(" ", 1)[-1] if " " in head else "…" + head
    if keep_after < len(after):
        tail = (tail.rsplit(" ", 1)[0] if " " in tail else tail) + "…"
    return f"{escape(head)}**{escape(sentence[at:at + len(words)])}**{escape(tail)}"

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

import json
import logging
import re
import threading
import warnings
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
WORDS_CACHED = 65536  # distinct words seen in texts, each with the lists that can start at it


_RUN = re.compile(r"[a-z0-9]+")
_WORD_START_CHAR = re.compile(r"(?<![a-z0-9])[a-z0-9]")


class Vocabularies:
    """Several named phrase lists, read together once per distinct text.

    A first-word index says which lists can start at each word of the text (a set lookup per word,
    never a regex over every position); only there is each list's own pattern tried, and its
    non-overlapping hits are read off in order, exactly as that list's own ``finditer`` would give
    them. Texts are memoised in bounded LRU caches keyed on the text.
    """

    def __init__(self, vocabularies: Mapping[str, list[str]], focus: frozenset[str] = frozenset()):
        self.patterns = {key: any_of(values) for key, values in vocabularies.items() if phrases(values)}
        # The lists read from notes and free-text fields: a note is parsed where their words are, not
        # wherever "back pain" or a drug name appears.
        self.focus = focus
        self._exact: dict[str, set[str]] = {}  # a phrase's first word -> the lists holding it
        self._stems: dict[str, list[tuple[str, str]]] = {}  # first letter -> (word stem*, list)
        self._inner: list[tuple[str, str]] = []  # "*fragment" words (any word beginning): (fragment, list)
        self._punctuated: dict[str, set[str]] = {}  # a phrase starting with a sign ("?", "#"): sign -> lists
        for key, values in vocabularies.items():
            for phrase in phrases(values):
                self._index(phrase.strip().lower(), key)
        self._lists_for = lru_cache(maxsize=WORDS_CACHED)(self._word_lists)
        self._short = lru_cache(maxsize=SHORT_TEXTS_CACHED)(self._analyse)
        self._long = lru_cache(maxsize=LONG_TEXTS_CACHED)(self._analyse)

    def _index(self, phrase: str, key: str) -> None:
        words = [w for w in re.split(r"[\s\-]+", phrase.strip("*")) if w]
        if not words:
            return
        first = words[0]
        run = _RUN.match(first)
        if run is None:
            self._punctuated.setdefault(first[0], set()).add(key)
        elif phrase.startswith("*"):
            self._inner.append((run.group(), key))
        elif len(words) == 1 and phrase.endswith("*"):
            self._stems.setdefault(run.group()[0], []).append((run.group(), key))
        else:
            self._exact.setdefault(run.group(), set()).add(key)

    def hits(self, text: str) -> TextHits:
        return (self._short if len(text) <= SHORT_TEXT else self._long)(text)

    def _word_lists(self, word: str) -> frozenset[str]:
        """The lists a phrase of which can start with this word (memoised: words repeat)."""
        keys = set(self._exact.get(word, ()))
        keys.update(k for stem, k in self._stems.get(word[0], ()) if word.startswith(stem))
        keys.update(k for fragment, k in self._inner if fragment in word)
        return frozenset(keys)

    def _analyse(self, text: str) -> TextHits:
        lowered = text.lower()
        candidates: dict[int, set[str]] = {}
        lists_for = self._lists_for
        for start in _WORD_START_CHAR.finditer(lowered):
            at = start.start()
            keys = lists_for(_RUN.match(lowered, at).group())
            if keys:
                candidates[at] = set(keys)
        for sign, keys in self._punctuated.items():
            at = lowered.find(sign)
            while at >= 0:
                if at == 0 or not lowered[at - 1].isalnum():
                    candidates.setdefault(at, set()).update(keys)
                at = lowered.find(sign, at + 1)
        return TextHits(self, text, lowered, dict(sorted(candidates.items())))


class TextHits:
    """One text's phrase hits per vocabulary (computed on first use), per-value-set verdicts, and
    its reading (the mentions with their ConText modifiers, computed once, when first asked)."""

    __slots__ = ("_vocabularies", "text", "lowered", "_starts", "_hits", "verdicts", "_mentions")

    def __init__(self, vocabularies: Vocabularies, text: str, lowered: str, starts: dict[int, set[str]]):
        self._vocabularies = vocabularies
        self.text, self.lowered, self._starts = text, lowered, starts
        self._hits: dict[str, list[tuple[int, int]]] = {}
        self.verdicts: dict[str, object] = {}  # value set id (or id#fallback) -> its answer
        self._mentions: dict[bool, dict[tuple[str, int, int], Mention]] | None = None

    def of(self, key: str) -> list[tuple[int, int]]:
        """The (start, end) spans the vocabulary's own pattern finds, in order, not overlapping."""
        found = self._hits.get(key)
        if found is None:
            found = []
            pattern = self._vocabularies.patterns.get(key)
            if pattern is not None:
                cursor = 0
                for start, keys in self._starts.items():
                    if start < cursor or key not in keys:
                        continue
                    hit = pattern.match(self.lowered, start)
                    if hit is not None:
                        found.append((start, hit.end()))
                        cursor = hit.end()
            self._hits[key] = found
        return found

    def mention(self, key: str, start: int, end: int) -> Mention:
        """The reading of the hit (start, end) of vocabulary `key` ("<value set>#synonyms")."""
        focus = self._vocabularies.focus
        group = key in focus  # a free-text list is read with the other free-text lists only
        if self._mentions is None:
            self._mentions = {}
        if group not in self._mentions:
            keys = {k for ks in self._starts.values() for k in ks if k.endswith(("#synonyms", "#fallback"))
                    and (not group or k in focus)}
            targets = [(s, e, k) for k in sorted(keys) for s, e in self.of(k)]
            self._mentions[group] = {(m.value_set, m.start, m.end): m for m in read_context(self.text, targets)}
        found = self._mentions[group].get((key.split("#")[0], start, end))
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


@cache
def _target_prefixes() -> tuple[str, ...]:
    """Cue words a synonym may start with ("history of breast cancer"): ConText reads them as modifiers
    of the rest, so "no history of cancer" is negated. Longest first; each followed by a space."""
    cues = (p.lower() + " " for p in rules()["context"].get("target_prefixes", ()))
    return tuple(sorted(cues, key=len, reverse=True))


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


# Segments end at blank lines, at a line starting a list item, a checkbox or a heading, at a line
# break after sentence punctuation, and after a checklist answer ending a line or followed by a comma
# ("Fever: no, weight loss: yes" are two items). Only line breaks, commas and semicolons can end one.
_BREAK = re.compile(r"[ \t]*(?:[,;][ \t]+|\r?\n)")
_ANSWER_BEFORE = re.compile(r"(?i)(?<![a-z0-9])(?:yes|no|y|n|absent|present|nil|none|negative|positive)$")
_ITEM_START = re.compile(r"\s*(?:[-*•·]|\d+[.)]|\[|[A-Z][A-Za-z /&()]{1,40}:)")
_BLANK_LINE = re.compile(r"[ \t]*(?:\r?\n|$)")
_LONG_LINE = 400
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\[(])")
_HEADING = re.compile(r"\s*([A-Za-z][A-Za-z /&()\-]{1,48}:)")
_SHOUTED = re.compile(r"\s*[A-Z][A-Z /&()\-]{2,48}\s*$")


def _segments(text: str) -> list[tuple[int, int]]:
    """(start, end) of the text's lines and sentences, cheaply: a wrapped line stays with its sentence."""
    out: list[tuple[int, int]] = []
    start = 0
    for brk in _BREAK.finditer(text):
        before = text[max(brk.start() - 12, start):brk.start()]
        if "\n" in brk.group():
            ends = (before[-1:] in (".", "!", "?", ";", ":") or _ANSWER_BEFORE.search(before) is not None
                    or _BLANK_LINE.match(text, brk.end()) is not None or _ITEM_START.match(text, brk.end()) is not None)
        else:
            ends = _ANSWER_BEFORE.search(before) is not None
        if ends:
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


@dataclass(frozen=True)
class _Block:
    start: int  # where its first segment starts in the text
    segments: tuple[tuple[int, int], ...]  # (start, end) of its segments, relative to ``start``
    heading: str  # the nearest heading before it ("" when none): the sectionizer reads the section from it


def _is_heading(text: str, a: int, b: int) -> bool:
    found = _HEADING.match(text, a, b)
    return (found is not None and len(found.group(1).split()) <= 6) or _SHOUTED.match(text, a, b) is not None


def _blocks(text: str, targets: list[tuple[int, int, str]]) -> list[_Block]:
    """Runs of consecutive segments holding a target (a target across two segments joins them), each
    with the nearest heading before it. One block is one parse: the parser's cost is mostly per call."""
    wanted = sorted((s, e) for s, e, _ in targets)
    merged: list[list[int]] = []  # [start, end, reach of the targets starting in it, holds a target]
    i = 0
    for a, b in _segments(text):
        if merged and merged[-1][2] > a:  # a target from the segment before runs into this one
            merged[-1][1] = b
        else:
            merged.append([a, b, 0, 0])
        while i < len(wanted) and wanted[i][0] < merged[-1][1]:
            merged[-1][2] = max(merged[-1][2], wanted[i][1])
            merged[-1][3] = merged[-1][3] or int(wanted[i][1] > merged[-1][0])
            i += 1
    blocks: list[_Block] = []
    run: list[tuple[int, int]] = []
    heading = run_heading = ""
    for a, b, _, holds in merged:
        if holds:
            if not run:
                run_heading = heading
            run.append((a, b))
        elif run:
            blocks.append(_block(run, run_heading))
            run = []
        if _is_heading(text, a, b):
            found = _HEADING.match(text, a, b)
            heading = found.group(1) if found is not None else text[a:b].strip()
    if run:
        blocks.append(_block(run, run_heading))
    return blocks


def _block(run: list[tuple[int, int]], heading: str) -> _Block:
    first = run[0][0]
    return _Block(first, tuple((a - first, b - first) for a, b in run), heading)


_lock = threading.Lock()
BLOCKS_CACHED = 16384
VOCABULARY_LIMIT = 200_000  # distinct strings the tokenizer may remember before the pipeline is rebuilt


def read_context(text: str, targets: list[tuple[int, int, str]]) -> tuple[Mention, ...]:
    """The mentions of ``targets`` ((start, end, vocabulary key) in ``text``) with their modifiers.

    Only the blocks of the text holding a target are parsed, each once: readings are cached by the
    block's text, its heading and its targets (templated text repeats across a patient's notes).
    """
    out: list[Mention] = []
    for block in _blocks(text, targets):
        end = block.start + block.segments[-1][1]
        inside = tuple(sorted((s - block.start, e - block.start, k.split("#")[0]) for s, e, k in targets
                              if block.start <= s and e <= end))
        for m in _read_block(block.heading, text[block.start:end], block.segments, inside):
            out.append(Mention(m.value_set, m.start + block.start, m.end + block.start, m.sentence,
                               m.sentence_start + block.start, m.section, m.negated, m.family, m.historical,
                               m.hypothetical, m.uncertain))
    return tuple(out)


@lru_cache(maxsize=BLOCKS_CACHED)
def _read_block(heading: str, text: str, segments: tuple[tuple[int, int], ...],
                targets: tuple[tuple[int, int, str], ...]) -> tuple[Mention, ...]:
    """One block through the pipeline: its heading, then each segment on a line of its own (the line
    break after an item lets a rule see its answer as the last word: "...: No"). Offsets are
    relative to the block's text."""
    from spacy.tokens import Span

    parts, table = [], []  # table: (offset in the parsed text, offset in the block's text, length)
    at = 0
    if heading and not text.lstrip().startswith(heading):
        parts.append(heading)
        at = len(heading) + 1
    headings = [0] if parts else []
    for a, b in segments:
        if _is_heading(text, a, b):
            headings.append(at)
        parts.append(text[a:b].replace("\n", " ").replace("\r", " "))
        table.append((at, a, b - a))
        at += b - a + 1

    def parsed(pos: int) -> int | None:
        for p_at, a, n in table:
            if a <= pos <= a + n:
                return p_at + pos - a
        return None

    def original(pos: int) -> int:
        for p_at, a, n in reversed(table):
            if pos >= p_at:
                return a + min(pos - p_at, n)
        return 0

    with _lock:
        nlp = _pipeline()
        doc = nlp.make_doc("\n".join(parts) + "\n")
        spans: dict[tuple[int, int, str], list[tuple[int, int]]] = {}
        prefixes = _target_prefixes()
        for start, end, label in targets:
            words = text[start:end].lower()
            cue = next((p for p in prefixes if words.startswith(p) and len(words) > len(p)), None)
            s, e = parsed(start + len(cue) if cue else start), parsed(end)
            span = doc.char_span(s, e, label=label, alignment_mode="expand") \
                if s is not None and e is not None else None
            if span is not None and len(span):
                spans.setdefault((span.start, span.end, label), []).append((start, end))
        doc.spans[SPAN_GROUP] = [Span(doc, a, b, label=label) for a, b, label in spans]
        for _, component in nlp.pipeline:
            doc = component(doc)
        found = list(doc.spans[SPAN_GROUP])
        if len(nlp.nlp.vocab.strings) > VOCABULARY_LIMIT:
            _pipeline.cache_clear()  # spaCy keeps every word it has seen: start afresh, bounded memory
    meaning = rules()["sections"]["meaning"]
    out = []
    for span in found:
        section = span._.section_category
        title = span._.section_title
        # A section's meaning lasts until the next heading of any kind, known to the sectionizer or not.
        if section and title is not None and any(title.start_char < h <= span.start_char for h in headings):
            section = None
        effect = meaning.get(section or "")
        s_start, s_end = original(span.sent.start_char), original(span.sent.end_char)
        for start, end in spans.get((span.start, span.end, span.label_), []):
            a, b = (s_start, s_end) if s_start <= start and end <= s_end else (start, end)
            out.append(Mention(
                value_set=span.label_, start=start, end=end, sentence=text[a:b], sentence_start=a,
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
    from spacy.language import Language

    nlp = spacy.blank("en")
    if "lbp_sentences" not in Language.factories:
        Language.component("lbp_sentences", func=_sentence_starts)
    nlp.add_pipe("lbp_sentences")
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
    added = [ConTextRule(r["literal"], r["category"], direction=r.get("direction", "BIDIRECTIONAL"),
                         pattern=r.get("pattern"), max_scope=r.get("max_scope")) for r in data["context"]["add"]]
    context.add([phrase for rule in kept + added for phrase in _as_phrase_rules(rule, ConTextRule)])
    return _Pipeline(nlp, [("sentences", nlp.get_pipe("lbp_sentences")), ("sectionizer", sectionizer),
                           ("context", context)])


def _sentence_starts(doc):
    """Sentences start after a line break and after . or ! (not ?: "?cauda equina" puts it before its
    term). Unlike spaCy's sentencizer, a sign opening a line ("[ ] urinary retention", "- numbness")
    starts the new sentence instead of closing the last one. (medspaCy's PyRuSH splitter measured
    3.3 ms per short sentence and 137 ms per 4 KB note here, against 0.5 ms and 14 ms: the hook's
    time budget decides.)"""
    for i, token in enumerate(doc):
        before = doc[i - 1] if i else None
        token.is_sent_start = before is None or "\n" in before.text or (
            before.text in (".", "!") and not token.is_punct)
    return doc


def _phrases_of(pattern) -> list[str] | None:
    """The phrases a token pattern made only of LOWER words (a word or a set of words, maybe optional)
    matches; None for any other pattern."""
    options = [""]
    for token in pattern:
        if not isinstance(token, dict) or set(token) - {"LOWER", "OP"} or token.get("OP", "?") != "?":
            return None
        value = token.get("LOWER")
        words = [value] if isinstance(value, str) else (
            value.get("IN") if isinstance(value, dict) and set(value) == {"IN"} else None)
        if not words:
            return None
        choices = [*words, *([""] if "OP" in token else [])]
        options = [f"{o} {w}".strip() for o in options for w in choices]
        if len(options) > 5000:
            return None
    return sorted({o for o in options if o})


def _as_phrase_rules(rule, rule_class) -> list:
    """A ConText rule whose pattern only lists words, as one literal rule per phrase: spaCy's
    PhraseMatcher finds them for a fraction of the Matcher's cost (it evaluates every set-membership
    predicate on every token). The same phrases are matched, case-insensitively."""
    phrases_ = _phrases_of(rule.pattern) if isinstance(rule.pattern, list) else None
    if not phrases_:
        return [rule]
    return [rule_class(phrase, rule.category, direction=rule.direction, on_match=rule.on_match,
                       on_modifies=rule.on_modifies, allowed_types=rule.allowed_types,
                       excluded_types=rule.excluded_types, max_scope=rule.max_scope,
                       max_targets=rule.max_targets, terminated_by=rule.terminated_by, metadata=rule.metadata)
            for phrase in phrases_]


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

"""Assessment + plan (+ order ratings) → CDS Hooks 2.0 cards and systemActions. Formatting only:
what to suggest is decided in cards/plan.py.

A card reads in five seconds: a summary naming the patient's decisive finding and the action; then
one line of why, the next step, one compact evidence line per flag, what could not be checked, and
one short source line. FHIR references, codes and the rules version go to extension["lbp-redflags"].
Card uuids derive from the hookInstance, so a retried call gets the same cards on any worker.
"""

from __future__ import annotations

import re

from fhir_mappings.findings import Evidence
from fhir_mappings.orders import ImagingOrder, orderable

from .assess import Assessment, RedFlag
from .data import recommendations, red_flags, rules_version
from .plan import CardContext, Plan, ago, shown_value, stable_uuid
from .rating import Rating, appropriateness, modality_display, rating_action
from .tiers import indicator

CODE_SUFFIX = re.compile(r"\s*\((?:ICD-10-CM|SNOMED CT|LOINC|RxNorm|CPT|local code)\s[^)]*\)")
SUMMARY_LIMIT = 139
# Classification wording → the words a clinician says (display texts of ICD-10-CM are long).
WORDING = (("Malignant neoplasm of ", "cancer of "), ("Secondary malignant neoplasm of ", "metastases to "),
           ("unspecified site of ", ""), (", unspecified", ""), ("Retention of urine", "Urinary retention"))


# ---------------------------------------------------------------- words for findings

def plain(label: str) -> str:
    """A record's label in plain words, without its code ("Malignant neoplasm of prostate (ICD-10-CM C61)"
    → "Cancer of prostate")."""
    text = CODE_SUFFIX.sub("", label or "").strip()
    for old, new in WORDING:
        text = text.replace(old, new)
    text = text.replace('"', "").strip(" ()") or label
    return text[0].upper() + text[1:]


def finding_words(flag: RedFlag) -> str:
    """The patient's finding in a few words: 'PSA 48 ng/mL', 'age 71', 'Prostate cancer'."""
    meta = red_flags()["flags"][flag.id]
    ev = flag.evidence[0]
    how = meta.get("describe", "label")
    if how == "value" and ev.value:
        value = shown_value(ev).replace(" years", "") if flag.id == "age-50-plus" else shown_value(ev).lstrip("-")
        return f"{meta['short']} {value}"
    if ev.how == "note":
        return meta["short"]  # the note's title says where, its quote what (in the evidence line)
    if how == "record":
        words = plain(ev.label)
        return words if len(words) <= 48 else words[:45].rsplit(" ", 1)[0] + "…"
    if how == "note" and flag.note:
        return f"{meta['short']} ({flag.note.split(';')[0]})"
    return meta["short"]


def findings_phrase(flags: list[RedFlag], limit: int) -> str:
    words = [finding_words(f) for f in flags]
    words = words[:1] + [w if w[:3].isupper() else w[0].lower() + w[1:] for w in words[1:]]
    for n in range(len(words), 0, -1):
        phrase = " + ".join(words[:n]) + (f" + {len(words) - n} more" if n < len(words) else "")
        if len(phrase) <= limit:
            return phrase
    return words[0][:limit]


# ---------------------------------------------------------------- summary

def summary(assessment: Assessment, plan: Plan, order_hook: bool) -> str:
    spec = plan.spec
    if assessment.tier == "none":
        key = "summary_order" if order_hook else "summary"
        if assessment.unavailable:
            key += "_incomplete"
        return spec[key]
    decisive = [assessment.flag(f) for f in assessment.decisive if assessment.flag(f)]
    template = spec["summary"]
    room = SUMMARY_LIMIT - len(template.replace("{findings}", ""))
    text = template.replace("{findings}", findings_phrase(decisive, room))
    text = text[0].upper() + text[1:]
    return text if len(text) <= SUMMARY_LIMIT else text[:SUMMARY_LIMIT - 1] + "…"


# ---------------------------------------------------------------- detail

def _evidence_item(ev: Evidence, today, what: str | None = None, quoted: bool = False) -> str:
    """'PSA 48 ng/mL, 10 days ago': what, value with unit, how long ago (and a status such as 'provisional');
    a note's sentence, unless it is quoted already on the card (``quoted``)."""
    if ev.reference.startswith("Patient/") or ev.reference == "Patient":
        return shown_value(ev)  # age: the patient's age today
    bits = [f"{what} {shown_value(ev)}" if what and ev.value else plain(ev.label)]
    if ev.value and not what and ev.how != "derived":
        bits.append(shown_value(ev))
    if ev.date:
        bits.append(ago(ev.date, today))
    if ev.status:
        bits.append(ev.status)
    if ev.quote and quoted:
        return ", ".join(bits) + " (quoted above)"
    if ev.quote:  # a note's sentence, already escaped, the matched words in bold
        return ", ".join(bits) + f': "{ev.quote}"'
    return ", ".join(bits)


def _sentence_of(ev: Evidence) -> tuple[str, str]:
    return ev.reference, ev.quote.replace("**", "") if ev.quote else ""


def _evidence_line(flag: RedFlag, today, items: int, quoted: set[tuple[str, str]]) -> str:
    """One flag's evidence. A note's sentence is quoted once per card: a second finding in the same
    sentence adds nothing under the same flag, and says "quoted above" under another."""
    meta = red_flags()["flags"][flag.id]
    what = meta["short"] if meta.get("describe") == "value" and meta.get("group") == "lab" else None
    own: set[tuple[str, str]] = set()
    evidence = []
    for ev in flag.evidence:
        if ev.quote and _sentence_of(ev) in own:
            continue
        own.add(_sentence_of(ev))
        evidence.append(ev)
    shown = []
    for ev in evidence[:items]:
        shown.append(_evidence_item(ev, today, what, quoted=bool(ev.quote) and _sentence_of(ev) in quoted))
        quoted.add(_sentence_of(ev))
    more = len(evidence) - len(shown)
    note = f" ({flag.note})" if flag.note and flag.note != "new" else ""
    return f"- **{flag.label}**{note}: " + "; ".join(shown) + (f"; +{more} more" if more > 0 else "")


def _not_checked(assessment: Assessment) -> str:
    """Data that could not be had, then notes that were not read; never cut from a card."""
    return "**Not checked (data unavailable):** " + "; ".join([*assessment.unavailable, *assessment.notes_unread]) + "."


def _why(assessment: Assessment) -> str:
    decisive = [assessment.flag(f) for f in assessment.decisive if assessment.flag(f)]
    if not decisive:
        return "No red flag in the record."
    words = findings_phrase(decisive, 400).replace(" + ", ", ")
    duration = f" for {assessment.lbp_days // 7} weeks" if assessment.lbp_days and assessment.lbp_days >= 14 else ""
    return f"{words[0].upper()}{words[1:]}, with low back pain{duration}."


def _probability(assessment: Assessment) -> str | None:
    if assessment.probability is None:
        return None
    percent = round(assessment.probability * 100)
    line = f"{recommendations()['probability_label']}: {'< 1' if percent < 1 else percent} %"
    if assessment.probability_left_out:
        names = " and ".join(finding_words(assessment.flag(f)) for f in assessment.probability_left_out)
        line += f"; it leaves out {names} (no published likelihood ratio)"
    return line + "."


def _order_line(order: ImagingOrder, rating: Rating) -> str:
    table = appropriateness()
    study = modality_display(order.modality)
    if rating.acr_category:
        verdict = table["acrCategories"][rating.acr_category]["display"].lower()
    else:
        verdict = "not rated by ACR"
    return f"- {study[0].upper()}{study[1:]}: {verdict} (PAMA {rating.pama_code})"


def _order_lines(ratings: list[tuple[ImagingOrder, Rating]], plan: Plan) -> list[str]:
    """The drafted orders' ratings; a study rated appropriate but not the preferred one says why the
    preferred one is (the card's suggestion replaces it)."""
    if not ratings:
        return []
    variants = ", ".join(sorted({r.acr_variant for _, r in ratings}))
    lines = ["**" + ("This order" if len(ratings) == 1 else "These orders") + f"** (ACR variant {variants}):"]
    lines += [_order_line(o, r) for o, r in ratings]
    preferred = plan.spec.get("study")
    # In an emergency a drafted lumbar MRI is made STAT rather than replaced (ACR variant 4 rates both
    # MRI studies usually appropriate), so only the studies the card replaces are compared.
    kept = ("mri-without", "mri-without-with") if plan.situation == "emergency" else ()
    not_preferred = [o for o, r in ratings if r.pama_code == "appropriate" and preferred and o.modality not in kept
                     and o.orderable != preferred and orderable(preferred).get("modality") != o.modality]
    if not_preferred:
        target = orderable(preferred)
        because = appropriateness().get("preferredBecause", {}).get(target.get("modality"), "")
        names = " and ".join(sorted({modality_display(o.modality) for o in not_preferred}))
        lines.append(f"{target['display']} is preferred over {names}" + (f": {because}." if because else "."))
    return lines


def detail_markdown(assessment: Assessment, plan: Plan, ratings: list[tuple[ImagingOrder, Rating]], today) -> str:
    """The detail, shortened to fit: first the sources, then the weaker flags' evidence; the decisive
    finding and the list of what could not be checked are never cut."""
    limits = recommendations()["card_limits"]
    quotes_notes = any(ev.how in ("text", "note") for f in assessment.red_flags for ev in f.evidence)
    limit = limits["max_quoting_notes"] if quotes_notes else limits["max"]
    spec = plan.spec

    def build(sources: str, weak_items: int | None) -> str:
        lines = [f"**Why:** {_why(assessment)}", f"**Next step:** {spec['next_step']}"]
        lines += _order_lines(ratings, plan)
        if plan.urology:
            lines.append("PSA of 20 ng/mL or more without a diagnosis: refer to urology as well.")
        if plan.labs and plan.orders_unchecked:
            lines.append("Active orders could not be read: check that the suggested labs are not already ordered.")
        if plan.labs_not_repeated:
            lines.append("Not repeated (recent result or already ordered): " + "; ".join(plan.labs_not_repeated) + ".")
        if assessment.older_labs and spec.get("labs"):
            lines.append("Older results, no longer counted: " + "; ".join(
                f"last {_evidence_item(ev, today)}" for ev in assessment.older_labs) + ".")
        if assessment.red_flags:
            lines.append("**Evidence**")
            weak = [f for f in assessment.red_flags if f.id not in assessment.decisive]
            strong = [f for f in assessment.red_flags if f.id in assessment.decisive]
            quoted: set[tuple[str, str]] = set()
            lines += [_evidence_line(f, today, 3, quoted) for f in strong]
            if weak_items is None or weak_items > 0:
                lines += [_evidence_line(f, today, weak_items or 2, quoted) for f in weak]
            elif weak:
                lines.append("- Also: " + ", ".join(f.label.lower() for f in weak))
        probability = _probability(assessment)
        if probability:
            lines.append(probability)
        if assessment.unavailable or assessment.notes_unread:
            lines.append(_not_checked(assessment))
        lines.append(f"_Sources: {sources}_")
        return "\n\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:])

    text = build(spec["sources"], None)
    for sources, weak_items in ((spec["sources_short"], None), (spec["sources_short"], 1),
                                (spec["sources_short"], 0)):
        if len(text) <= limit:
            break
        text = build(sources, weak_items)
    return text


# ---------------------------------------------------------------- the card

def _links(keys: list[str]) -> list[dict]:
    links = recommendations()["links"]
    return [{"label": links[k]["label"], "url": links[k]["url"], "type": "absolute"} for k in keys]


def _source(ctx: CardContext, plan: Plan) -> dict:
    systems = recommendations()["code_systems"]
    source = {"label": recommendations()["source_label"], "topic": {"system": systems["topic"], **plan.spec["topic"]}}
    if ctx.source_url:
        source["url"] = ctx.source_url
    return source


def build_card(ctx: CardContext, assessment: Assessment, plan: Plan, *, today,
               ratings: list[tuple[ImagingOrder, Rating]] | None = None, order_hook: bool = False) -> dict:
    tier = assessment.tier
    systems = recommendations()["code_systems"]
    card = {
        "uuid": stable_uuid(ctx, "card", tier),
        "summary": summary(assessment, plan, order_hook),
        "detail": detail_markdown(assessment, plan, ratings or [], today),
        "indicator": indicator(tier),
        "source": _source(ctx, plan),
    }
    if plan.suggestions:
        card["suggestions"] = plan.suggestions
        card["selectionBehavior"] = "any"
    card["overrideReasons"] = [{"system": systems["override_reason"], **reason}
                               for reason in recommendations()["override_reasons"][tier]]
    card["links"] = _links(plan.spec["links"])
    card["extension"] = {"lbp-redflags": extension(assessment, ratings or [])}
    return card


def extension(assessment: Assessment, ratings: list[tuple[ImagingOrder, Rating]]) -> dict:
    """What a machine (or an audit) needs and a clinician does not read: references, codes, rules version."""
    ext = {
        "tier": assessment.tier,
        "redFlags": assessment.flag_ids,
        "decisive": list(assessment.decisive),
        "rules": list(assessment.rules),
        "evidence": {flag.id: sorted({r for ev in flag.evidence for r in ev.reference.split(", ")})
                     for flag in assessment.red_flags},
        "records": [{"flag": flag.id, "reference": ev.reference, "label": ev.label,
                     **({"date": ev.date.isoformat()} if ev.date else {}),
                     **({"value": ev.value} if ev.value else {})}
                    for flag in assessment.red_flags for ev in flag.evidence],
        "dataComplete": not (assessment.unavailable or assessment.notes_unread),
        "rulesVersion": rules_version(),
    }
    if assessment.unavailable or assessment.notes_unread:
        ext["unavailable"] = [*assessment.unavailable, *assessment.notes_unread]
    if assessment.lbp_days is not None:
        ext["lbpDays"] = assessment.lbp_days
    if assessment.lbp_evidence:
        ext["lowBackPain"] = [ev.reference for ev in assessment.lbp_evidence]
    if assessment.probability is not None:
        ext["estimatedProbability"] = round(assessment.probability, 4)
    if ratings:
        ext["ratings"] = [{**({"order": o.reference} if o.resource_id else {}), "study": o.orderable or o.modality,
                           "modality": r.modality, "rating": r.pama_code,
                           "acrCategory": r.acr_category, "acrVariant": r.acr_variant} for o, r in ratings]
    return ext


def follow_up_card(ctx: CardContext, assessment: Assessment, plan: Plan,
                   ratings: list[tuple[ImagingOrder, Rating]]) -> dict:
    """order-sign after the clinician accepted the same advice at order-select: the rating only."""
    worst = "not-appropriate" if any(r.pama_code == "not-appropriate" for _, r in ratings) else "appropriate"
    lines = _order_lines(ratings, plan)
    lines.append("The full advice for this patient and study was shown and accepted at order selection.")
    if assessment.unavailable or assessment.notes_unread:
        lines.append(_not_checked(assessment))
    ext = extension(assessment, ratings)
    ext["followUp"] = True
    return {
        "uuid": stable_uuid(ctx, "card", assessment.tier),
        "summary": f"Lumbar imaging rated {worst.replace('-', ' ')}; advice already accepted at order selection",
        "detail": "\n\n".join(lines),
        "indicator": indicator(assessment.tier),
        "source": _source(ctx, plan),
        "extension": {"lbp-redflags": ext},
    }


def rating_actions(ctx: CardContext, ratings: list[tuple[ImagingOrder, Rating]]) -> list[dict]:
    """An update per rated draft; a draft without an id cannot be updated, so it gets none."""
    return [rating_action(order, rating, stable_uuid(ctx, "consult", order.reference))
            for order, rating in ratings if order.resource_id]


__all__ = ["CardContext", "build_card", "follow_up_card", "rating_actions", "stable_uuid"]

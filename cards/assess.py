"""The clinical rules: findings → red flags → tier. The one file a clinician reads.

Every number, and which tier each flag raises alone or in combination, comes from
cards/knowledge/red_flags.json with its source. ``assess()`` loops over the flags listed there: a flag
with a function registered below (``@rule``) is found by it; any other flag is found from its value
sets alone (``valueSets``, ``counts``). Pure functions over plain data: no HTTP, no FHIR shapes, no
clock (``facts.today`` is the day of the request).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

from fhir_mappings.findings import Evidence, Facts, Finding
from fhir_mappings.terminology import value_set

from .data import red_flags as knowledge
from .data import rules_version, threshold
from .tiers import rank

__all__ = ["Assessment", "RedFlag", "assess", "rules_version"]


@dataclass
class RedFlag:
    id: str
    label: str
    evidence: list[Evidence]
    source: str
    note: str = ""  # e.g. "ESR ≥ 50 mm/h, strong"
    strong: bool = False  # raises the flag's strongAlone tier


@dataclass
class Assessment:
    applicable: bool
    tier: str = "none"
    red_flags: list[RedFlag] = field(default_factory=list)
    decisive: list[str] = field(default_factory=list)  # ids of the flags that set the tier
    rules: list[str] = field(default_factory=list)  # the rules that set it: "<flag>", "<flag>:strong", combinations
    reasons: list[str] = field(default_factory=list)  # why this tier, in words
    source: str = ""  # the guidelines and studies behind the tier
    lbp_evidence: list[Evidence] = field(default_factory=list)
    lbp_days: int | None = None
    known_cancer: bool = False  # any cancer history, metastatic disease or myeloma
    probability: float | None = None  # estimated chance the back pain is due to cancer
    probability_left_out: list[str] = field(default_factory=list)  # tier-setting flags without a likelihood ratio
    unavailable: list[str] = field(default_factory=list)
    notes_unread: list[str] = field(default_factory=list)  # named on the card; never a card of its own
    older_labs: list[Evidence] = field(default_factory=list)  # abnormal, too old to set a flag

    @property
    def flag_ids(self) -> list[str]:
        return [f.id for f in self.red_flags]

    def flag(self, flag_id: str) -> RedFlag | None:
        return next((f for f in self.red_flags if f.id == flag_id), None)

    @property
    def lbp_weeks(self) -> float | None:
        return None if self.lbp_days is None else self.lbp_days / 7


class Flags(dict):
    """The red flags found so far, by id, and the abnormal lab results too old to set one."""

    def __init__(self):
        super().__init__()
        self.older_labs: list[Evidence] = []

    def strong(self, flag_id: str) -> bool:
        return flag_id in self and self[flag_id].strong


# Functions that find flags needing more than a value-set match; each is registered for the flags it sets.
RULES: dict[str, Callable[[Facts, Flags], None]] = {}


def rule(*flag_ids: str):
    def register(function):
        for flag_id in flag_ids:
            RULES[flag_id] = function
        return function
    return register


def _days_ago(day: date | None, facts: Facts) -> int | None:
    return None if day is None else (facts.today - day).days


def _episode_within(facts: Facts, days: float) -> bool:
    """Whether the current LBP episode began within the last ``days`` days."""
    age = _days_ago(facts.lbp_onset, facts)
    return age is not None and age <= days


def _within(day: date | None, facts: Facts, days: float, episode_days: float | None = None) -> bool:
    """On or after ``today - days``, or inside the current episode when it began within ``episode_days``."""
    age = _days_ago(day, facts)
    if age is None:
        return False
    if age <= days:
        return True
    return episode_days is not None and _episode_within(facts, episode_days) and day >= facts.lbp_onset


def _is_new(finding: Finding, facts: Facts) -> bool:
    """'New' (issue 13): onset in the last 90 days, or in the current LBP episode when that episode
    began within 12 months; an unknown onset counts as new, so a missing date never hides an emergency."""
    if finding.onset is None:
        return True
    return _within(finding.onset, facts, threshold("new_symptom_days"), threshold("new_symptom_episode_days"))


def _severe(finding: Finding) -> bool:
    return finding.concept in ("cauda-equina-syndrome", "cord-compression") or bool(
        value_set("severe-deficit-modifier").match_text(finding.text))


def _years_since(day: date | None, today: date) -> float | None:
    return None if day is None else (today - day).days / 365.25


def _flag(flags: Flags, flag_id: str, evidence: list[Evidence], note: str = "", strong: bool = False) -> None:
    if not evidence:
        return
    meta = knowledge()["flags"][flag_id]
    existing = flags.get(flag_id)
    if existing:
        existing.evidence.extend(e for e in evidence if e not in existing.evidence)
        existing.strong = existing.strong or strong
        if note and note not in existing.note:
            existing.note = "; ".join(n for n in (existing.note, note) if n)
        return
    flags[flag_id] = RedFlag(flag_id, meta["label"], list(evidence), meta["source"], note, strong)


# ---------------------------------------------------------------- the flags

@rule("cancer-history", "metastatic-disease", "myeloma")
def cancer_flags(facts: Facts, flags: Flags) -> None:
    """cancer-history (strong when qualifying: within 20 years, active or in remission), metastatic
    disease and myeloma (which imply it)."""
    cancers = facts.having("malignancy", "cancer-personal-history", "metastatic-disease", "myeloma")
    treatments = facts.having("cancer-treatment")
    latest_treatment = max((t.last_activity or t.onset for t in treatments if t.last_activity or t.onset),
                           default=None)
    remote_years = threshold("cancer_remote_years")
    qualifying, remote = [], []
    for cancer in cancers:
        # The age of a cancer: latest of abatement, treatment and onset; recordedDate only without them.
        dates = [d for d in (cancer.last_activity, latest_treatment) if d] or [d for d in (cancer.recorded,) if d]
        years = _years_since(max(dates), facts.today) if dates else None
        if cancer.active or cancer.remission or cancer.suspected or years is None or years < remote_years:
            qualifying.append(cancer)
        else:
            remote.append(cancer)
    for treatment in treatments:  # treatment without a diagnosis on record still shows a cancer history
        years = _years_since(treatment.last_activity or treatment.onset, facts.today)
        if years is None or years < remote_years:
            qualifying.append(treatment)
        else:
            remote.append(treatment)
    metastatic = [c.evidence for c in cancers if c.concept == "metastatic-disease"]
    myeloma = [c.evidence for c in cancers if c.concept == "myeloma"]
    _flag(flags, "metastatic-disease", metastatic, strong=True)
    _flag(flags, "myeloma", myeloma, strong=True)
    if qualifying or metastatic or myeloma:
        _flag(flags, "cancer-history", [c.evidence for c in qualifying] or metastatic + myeloma,
              note=f"within {remote_years:g} years", strong=True)
    if remote:
        _flag(flags, "cancer-history", [c.evidence for c in remote],
              note=f"cured {remote_years:g} or more years ago: a weak flag only")


@rule("unexplained-weight-loss")
def weight_loss_flag(facts: Facts, flags: Flags) -> None:
    documented = [f.evidence for f in facts.having("unintentional-weight-loss")
                  if f.active and _recent_year(f, facts)]
    explained = [f for f in facts.having("weight-loss-explained") if _recent_year(f, facts, years=2)]
    derived = _derived_weight_loss(facts)
    if derived and not explained:
        documented.append(derived)
    _flag(flags, "unexplained-weight-loss", documented)


def _recent_year(finding: Finding, facts: Facts, years: int = 1) -> bool:
    day = finding.last_activity or finding.onset or finding.recorded
    return day is None or finding.active or (facts.today - day).days <= 366 * years


def _derived_weight_loss(facts: Facts) -> Evidence | None:
    """> 5 % fall: the latest weight against the highest weight 1–12 months before it."""
    weights = facts.series.get("body-weight") or []
    if len(weights) < 2 or weights[-1].evidence.date is None:
        return None
    latest = weights[-1]
    window = knowledge()["thresholds"]["weight_loss_window_days"]
    earlier = [w for w in weights[:-1] if w.evidence.date
               and window["min"] <= (latest.evidence.date - w.evidence.date).days <= window["max"]]
    if not earlier:
        return None
    start = max(earlier, key=lambda w: w.value)
    loss = (start.value - latest.value) / start.value
    if loss <= threshold("weight_loss_fraction"):
        return None
    months = round((latest.evidence.date - start.evidence.date).days / 30.44)
    return Evidence(
        reference=f"{start.evidence.reference}, {latest.evidence.reference}",
        label=f"Body weight fell {loss * 100:.1f} % in {months} months ({start.value:.1f} → {latest.value:.1f} kg)",
        date=latest.evidence.date, value=f"-{loss * 100:.1f} %", how="derived")


@rule("failure-to-improve")
def failure_to_improve_flag(facts: Facts, flags: Flags) -> None:
    """LBP for 4 weeks or more despite treatment, in an episode that began within 12 months; in a
    longer (chronic) episode only when the record says the pain is worsening in the last 90 days."""
    lbp_days = _days_ago(facts.lbp_onset, facts)
    if lbp_days is None or lbp_days < threshold("failure_to_improve_days"):
        return
    worsening = [f for f in facts.having("pain-worsening")
                 if _within(max((d for d in (f.onset, f.recorded) if d), default=None), facts,
                            threshold("worsening_days"))]
    chronic = lbp_days > threshold("failure_to_improve_episode_days")
    if chronic and not worsening:
        return
    start = facts.lbp_onset
    in_episode = [f for f in facts.having("analgesic-treatment", "physiotherapy")
                  if start is None or f.onset is None or f.onset >= start]
    in_episode += [e for e in facts.lbp_encounters if start is None or (e.onset and e.onset >= start)]
    if in_episode and chronic:
        in_episode += worsening
    _flag(flags, "failure-to-improve", [f.evidence for f in in_episode],
          note=f"low back pain for {lbp_days // 7} weeks despite treatment" + ("; worsening" if chronic else ""))


@rule("neuro-deficit", "bladder-bowel-dysfunction", "saddle-anesthesia")
def neuro_flags(facts: Facts, flags: Flags) -> None:
    """neuro-deficit (strong when severe, progressive, bilateral or cauda equina / cord compression),
    bladder-bowel-dysfunction, saddle-anesthesia: new symptoms only (see _is_new)."""
    qualifying_cancer = flags.strong("cancer-history")
    new = [f for f in facts.findings if (f.active or f.suspected) and _is_new(f, facts)]
    ces = [f for f in new if f.concept in ("cauda-equina-syndrome", "cord-compression")]
    motor = [f for f in new if f.concept == "motor-deficit"]
    sensory = [f for f in new if f.concept in ("sensory-symptom", "gait-disturbance")]
    severe = [f for f in ces + motor + sensory if _severe(f)]
    deficit = ces + motor + [f for f in sensory if _severe(f)]
    if qualifying_cancer:
        deficit += [f for f in sensory if f not in deficit]
    _flag(flags, "neuro-deficit", [f.evidence for f in deficit],
          note="severe, progressive or bilateral" if severe else "new", strong=bool(severe))
    bladder = [f for f in new if f.concept in ("urinary-retention", "urinary-incontinence", "fecal-incontinence")]
    saddle = [f for f in new if f.concept == "saddle-anesthesia"]
    _flag(flags, "bladder-bowel-dysfunction", [f.evidence for f in bladder], note="new")
    _flag(flags, "saddle-anesthesia", [f.evidence for f in saddle], note="new")


@rule("fever")
def fever_flag(facts: Facts, flags: Flags) -> None:
    """A temperature ≥ 38 °C taken in the last 30 days, or in an episode that began within 90 days."""
    days, episode_days = threshold("fever_lookback_days"), threshold("fever_episode_days")
    cutoff = threshold("fever_cel")
    hot = [t.evidence for t in facts.series.get("body-temperature", [])
           if t.value >= cutoff and (t.evidence.date is None or _within(t.evidence.date, facts, days, episode_days))]
    coded = [f.evidence for f in facts.having("fever")
             if f.active and (f.onset is None or _within(f.onset, facts, days, episode_days))]
    _flag(flags, "fever", hot + coded, note=f"≥ {cutoff:g} °C")


def _beyond(value: float, name: str) -> bool:
    item = knowledge()["thresholds"][name]
    limit, comparison = item["value"], item["comparison"]
    return {">": value > limit, ">=": value >= limit, "<": value < limit}[comparison]


def _describe(what: str, name: str) -> str:
    item = knowledge()["thresholds"][name]
    symbol = {">": ">", ">=": "≥", "<": "<"}[item["comparison"]]
    unit = item.get("unit", "")
    return f"{what} {symbol} {item['value']:g}{'' if unit == '%' else ' '}{unit}".rstrip()


def _graded(flags: Flags, older: list, facts: Facts, flag_id: str, result, weak: str, strong: str | None,
            what: str) -> None:
    """The newest usable result decides. Beyond the weak threshold it flags when it is from the last
    90 days; beyond the strong one it counts alone for imaging for 12 months ("not repeated since").
    An abnormal result older than that sets no flag and is kept in ``older`` for the card."""
    if result is None or not _beyond(result.value, weak):
        return
    age = _days_ago(result.evidence.date, facts)
    weak_days, strong_days = threshold("lab_weak_days"), threshold("lab_strong_days")
    is_strong = strong is not None and _beyond(result.value, strong)
    if is_strong and (age is None or age <= strong_days):
        note = _describe(what, strong) + ", strong"
        if age is not None and age > weak_days:
            note += f"; not repeated since {result.evidence.date.isoformat()}"
        _flag(flags, flag_id, [result.evidence], strong=True, note=note)
    elif age is None or age <= weak_days:
        _flag(flags, flag_id, [result.evidence], note=_describe(what, weak))
    else:
        older.append(result.evidence)


@rule("hypercalcemia", "anemia", "elevated-esr", "elevated-psa", "elevated-alkaline-phosphatase")
def lab_flags(facts: Facts, flags: Flags) -> None:
    """The lab flags; abnormal results too old to set one go to flags.older_labs (listed where labs are advised)."""
    labs, older = facts.labs, flags.older_labs
    female_limits = facts.sex != "male"  # unknown sex: the lower (female) threshold
    _graded(flags, older, facts, "hypercalcemia", labs.get("calcium"), "calcium_mg_dl", None, "calcium")
    ionized = labs.get("ionized-calcium")
    if ionized:
        limit = ionized.reference_high or threshold("ionized_calcium_mmol_l")
        if ionized.value > limit:
            if _within(ionized.evidence.date, facts, threshold("lab_weak_days")) or ionized.evidence.date is None:
                _flag(flags, "hypercalcemia", [ionized.evidence], note=f"ionised calcium > {limit:g} mmol/L")
            else:
                older.append(ionized.evidence)
    _graded(flags, older, facts, "anemia", labs.get("hemoglobin"),
            "hemoglobin_female_g_dl" if female_limits else "hemoglobin_male_g_dl", "hemoglobin_strong_g_dl", "Hb")
    _graded(flags, older, facts, "anemia", labs.get("hematocrit"),
            "hematocrit_female_pct" if female_limits else "hematocrit_male_pct", "hematocrit_strong_pct",
            "haematocrit")
    _graded(flags, older, facts, "elevated-esr", labs.get("esr"), "esr_mm_h", "esr_strong_mm_h", "ESR")
    _graded(flags, older, facts, "elevated-psa", labs.get("psa"), "psa_ng_ml", "psa_strong_ng_ml", "PSA")
    for flag_id, diagnosis in (("hypercalcemia", "hypercalcemia-diagnosis"), ("anemia", "anemia-diagnosis"),
                               ("elevated-esr", "elevated-esr-diagnosis"), ("elevated-psa", "elevated-psa-diagnosis")):
        # A coded abnormal result counts like a weak result: when dated in the last 90 days (or undated).
        _flag(flags, flag_id, [f.evidence for f in facts.having(diagnosis) if f.active and (
            (f.onset or f.recorded) is None or _within(max(d for d in (f.onset, f.recorded) if d), facts,
                                                       threshold("lab_weak_days")))])

    alp = facts.labs.get("alkaline-phosphatase")
    if alp:
        limit = alp.reference_high if alp.reference_high is not None else threshold("alp_default_u_l")
        if alp.value > limit:
            if alp.evidence.date is None or _within(alp.evidence.date, facts, threshold("lab_weak_days")):
                _flag(flags, "elevated-alkaline-phosphatase", [alp.evidence],
                      note=f"above the upper reference limit {limit:g} U/L")
            else:
                older.append(alp.evidence)


@rule("smoking")
def smoking_flag(facts: Facts, flags: Flags) -> None:
    if facts.smoking_current is True and facts.smoking_status:
        _flag(flags, "smoking", [facts.smoking_status.evidence])
    elif facts.smoking_current is None:
        _flag(flags, "smoking", [f.evidence for f in facts.having("smoking-current") if f.active])


@rule("age-50-plus", "pediatric-persistent-pain")
def age_flags(facts: Facts, flags: Flags) -> None:
    if facts.age is None:
        return
    lbp_days = _days_ago(facts.lbp_onset, facts)
    patient = Evidence(facts.patient_reference or "Patient", "Age on the day of the request",
                       facts.today, f"{facts.age} years")
    if facts.age >= threshold("age_years"):
        _flag(flags, "age-50-plus", [patient])
    if facts.age < threshold("pediatric_age_years") and lbp_days is not None and \
            lbp_days >= threshold("failure_to_improve_days"):
        _flag(flags, "pediatric-persistent-pain", [patient], note=f"low back pain for {lbp_days // 7} weeks")


# ---------------------------------------------------------------- flags found from data alone

def finding_flag(flag_id: str, facts: Facts, flags: Flags) -> None:
    """A flag set by the findings of its value sets (``valueSets``), counted as ``counts`` says:
    ``active``, ``active-or-suspected`` or ``new`` (active or suspected, with a new onset)."""
    meta = knowledge()["flags"][flag_id]
    counts = meta.get("counts", "active")
    found = facts.having(*meta.get("valueSets", ()))
    if counts == "active":
        found = [f for f in found if f.active]
    else:
        found = [f for f in found if f.active or f.suspected]
    if counts == "new":
        found = [f for f in found if _is_new(f, facts)]
    _flag(flags, flag_id, [f.evidence for f in found])


# ---------------------------------------------------------------- the tier

def _present(flags: Flags, reference: str) -> bool:
    """'fever' is present; 'cancer-history:strong' is present and strong."""
    flag_id, _, strength = reference.partition(":")
    return flags.strong(flag_id) if strength == "strong" else flag_id in flags


def _combination_fires(combination: dict, flags: Flags) -> list[str]:
    """The flag ids behind a combination that applies, or [] when it does not."""
    every = combination.get("all", [])
    if not all(_present(flags, r) for r in every):
        return []
    used = [r.partition(":")[0] for r in every]
    if combination.get("any"):
        hits = [r.partition(":")[0] for r in combination["any"] if _present(flags, r)]
        if not hits:
            return []
        used += hits
    if "atLeast" in combination:
        hits = [r.partition(":")[0] for r in combination["of"] if _present(flags, r)]
        if len(hits) < combination["atLeast"]:
            return []
        used += hits
    return used


def tier_of(flags: Flags) -> tuple[str, list[str], list[str], list[str]]:
    """(tier, decisive flag ids, rule ids, reasons): the highest tier any flag raises alone (or when
    strong) or any combination raises; the flags and rules that reach that tier decide it."""
    raised: list[tuple[str, str, list[str], str]] = []  # (tier, rule id, flag ids, why)
    for flag_id, flag in flags.items():
        meta = knowledge()["flags"][flag_id]
        if flag.strong and meta.get("strongAlone"):
            raised.append((meta["strongAlone"], f"{flag_id}:strong", [flag_id], flag.label.lower()))
        else:
            raised.append((meta.get("alone", "consider"), flag_id, [flag_id], flag.label.lower()))
    for combination in knowledge()["combinations"]:
        used = _combination_fires(combination, flags)
        if used:
            raised.append((combination["tier"], combination["id"], used, combination["why"]))
    if not raised:
        return "none", [], [], ["no red flag found"]
    tier = max((r[0] for r in raised), key=rank)
    top = [r for r in raised if r[0] == tier]
    order = list(knowledge()["flags"])
    decisive = sorted({f for _, _, used, _ in top for f in used}, key=order.index)
    return tier, decisive, [r[1] for r in top], [r[3] for r in top]


def assess(facts: Facts) -> Assessment:
    applicable = bool(facts.lbp) or bool(facts.orders)
    lbp_days = _days_ago(facts.lbp_onset, facts)
    result = Assessment(applicable=applicable, lbp_days=lbp_days, unavailable=list(facts.unavailable),
                        notes_unread=list(facts.notes_unread),
                        lbp_evidence=[f.evidence for f in facts.lbp])
    if not applicable:
        return result

    flags = Flags()
    done: set = set()
    for flag_id in knowledge()["flags"]:  # in the file's order: cancer before the neurological flags
        function = RULES.get(flag_id)
        if function is None:
            finding_flag(flag_id, facts, flags)
        elif function not in done:
            function(facts, flags)
            done.add(function)

    order = list(knowledge()["flags"])
    result.red_flags = sorted(flags.values(), key=lambda f: order.index(f.id))
    result.older_labs = flags.older_labs
    result.known_cancer = any(f in flags for f in ("cancer-history", "metastatic-disease", "myeloma"))
    result.tier, result.decisive, result.rules, result.reasons = tier_of(flags)
    tiers = {t["id"]: t for t in knowledge()["tiers"]}
    combos = {c["id"]: c for c in knowledge()["combinations"]}
    sources = [combos[r]["source"] for r in result.rules if r in combos]
    result.source = "; ".join(sources or [tiers[result.tier]["source"]])
    if result.tier in ("consider", "imaging") and not result.known_cancer:
        result.probability, result.probability_left_out = estimate_probability(flags, result.decisive)
    return result


def estimate_probability(flags: dict[str, RedFlag], decisive: list[str] = ()) -> tuple[float, list[str]]:
    """Chance the back pain is due to cancer: the primary-care pre-test probability times the
    likelihood ratio of every present flag that has one, assuming the flags are independent (they
    are not, so several flags overestimate it). Returns it and the tier-setting flags left out."""
    lrs = knowledge()["likelihood_ratios"]
    pre = knowledge()["pretest_probability"]["value"]
    odds = pre / (1 - pre)
    left_out = []
    for flag_id, flag in flags.items():
        key = knowledge()["flags"][flag_id].get("lr", flag_id)
        key = f"{key}-strong" if flag.strong and f"{key}-strong" in lrs else key
        if key in lrs:
            odds *= lrs[key]["value"]
        elif flag_id in decisive:
            left_out.append(flag_id)
    return odds / (1 + odds), left_out

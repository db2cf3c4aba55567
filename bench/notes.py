"""Progress notes for the benchmark: what a clinician writes at a back-pain follow-up, about 4 KB each.

Each note has the sections a primary-care progress note has (HPI, review of systems, past medical history,
medications, family and social history, examination, assessment, plan) and the mentions the note reader
must weigh: a few red flags stated (night pain, weight loss, cancer history), others negated (saddle
anaesthesia, retention), a relative's cancer, safety-netting advice and checklist lines answered no. The
notes of one patient differ from visit to visit (sentences drawn from pools, seeded), as a real chart does.

Every sentence and every list line (and every review-of-systems line after its heading, since checklist
answers end a piece) carries VARIANT, an 8-digit tag that `note_text` fills. The
benchmark fills it with a different value on every request to measure a first read, or with the same value
to measure reading the same notes again. The reader caches its readings piece by piece (a line, or a
sentence of a long paragraph), so a value only in the header would leave every piece that holds a finding
as it was, already read: the tag is in every piece. All notes of one request share the value, so sentences
copied forward from visit to visit repeat within a request as they do in a real chart.
"""

from __future__ import annotations

import base64
import random
from datetime import date, timedelta

VARIANT = "{{V}}"
DEFAULT_VARIANT = "00000000"   # 8 digits, as every value the benchmark substitutes (bench/post.lua)
NOTE_TYPE = {"coding": [{"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}],
             "text": "Progress note"}
CLINICAL_NOTE = {"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                             "code": "clinical-note", "display": "Clinical Note"}]}

_OPENINGS = [
    "He returns for follow-up of low back pain that began {weeks} weeks ago after lifting a crate at work.",
    "Follow-up visit for low back pain, now {weeks} weeks in duration, which started without a clear injury.",
    "He is seen again for lumbar back pain of {weeks} weeks, worse since the weekend, not better with rest.",
]
_HPI = [
    "The pain is in the lower lumbar region, mostly central, radiating to the left buttock but not below the knee.",
    "He rates it {score}/10 today, {best}/10 at best, and describes it as a deep ache with occasional sharp twinges.",
    "Ibuprofen 400 mg three times daily helps a little; paracetamol alone does not.",
    "He has tried heat packs and the exercises the physiotherapist gave him, with modest benefit.",
    "Sitting for more than an hour makes it worse; walking short distances is tolerated.",
    "He has missed {days} days of work and is worried about his job as a warehouse supervisor.",
    "Sleep is disturbed and he has started sleeping in a recliner.",
    "He has not had any falls and has no history of trauma to the back.",
]
_RED_FLAGS_STATED = [
    "Pain wakes him at night about three nights a week and he has to get up and walk around.",
    "He reports an unintentional weight loss of about 4 kg over the last two months, with reduced appetite.",
    "He now also has pain at rest, even lying flat in bed.",
]
_RED_FLAGS_NEGATED = [
    "He denies saddle anaesthesia, urinary retention or faecal incontinence.",
    "No leg weakness, no numbness in the groin and no change in bowel habit.",
    "He has had no fever or chills and no recent infections.",
]
_ROS = [
    "Constitutional: fatigue as above; fever: no; night sweats: no.",
    "Cardiovascular: no chest pain, no palpitations, no ankle swelling.",
    "Respiratory: no cough, no haemoptysis, no shortness of breath on exertion.",
    "Gastrointestinal: appetite reduced; no nausea, vomiting, melaena or rectal bleeding.",
    "Genitourinary: Urinary retention: No. Incontinence: No. Nocturia once a night, unchanged.",
    "Musculoskeletal: back pain as per HPI; no other joint pain or swelling.",
    "Neurological: Saddle anaesthesia: No. Leg weakness: No. No headaches or visual disturbance.",
    "Skin: no rashes, no new lumps noticed.",
]
_PMH = [
    "History of prostate cancer, s/p radical prostatectomy in 2018, PSA undetectable at last check.",
    "Hypertension, well controlled on lisinopril.",
    "Hyperlipidaemia on simvastatin.",
    "Prediabetes, last HbA1c 6.1%.",
    "Right rotator cuff tendinopathy in 2019, resolved with physiotherapy.",
    "Appendicectomy as a child.",
]
_MEDICATIONS = [
    "Lisinopril 10 mg once daily.", "Simvastatin 10 mg at night.", "Ibuprofen 400 mg three times daily with food.",
    "Paracetamol 1 g up to four times daily as needed.", "Omeprazole 20 mg once daily while on ibuprofen.",
]
_FAMILY = [
    "Mother had breast cancer at 62 and died at 80 of a stroke.",
    "Father had a myocardial infarction at 70.",
    "One brother with type 2 diabetes; no family history of bowel cancer.",
]
_SOCIAL = [
    "Lives with his wife, who drives him to appointments.",
    "Ex-smoker, 20 pack-years, quit in 2010. Drinks about 6 units of alcohol a week.",
    "Works full time as a warehouse supervisor; enjoys fishing at weekends.",
]
_EXAM = [
    "BP {sys}/{dia} mmHg, HR {hr}/min, T 36.{t} C, weight {kg} kg.",
    "Tender over the lower lumbar paraspinal muscles, no midline bony tenderness.",
    "Lumbar flexion limited to about 50 percent by pain; extension less painful.",
    "Straight leg raise negative bilaterally.",
    "Power 5/5 in both lower limbs; knee and ankle reflexes present and symmetrical.",
    "Sensation intact to light touch in both legs and in the perineum.",
    "Gait normal; able to heel and toe walk.",
]
_ASSESSMENT = [
    "Subacute low back pain with nocturnal pain and weight loss in a man with a history of prostate cancer.",
    "No features of cauda equina syndrome on history or examination today.",
    "Mechanical component likely, but the history of cancer and the night pain need investigation.",
]
_PLAN = [
    "Continue ibuprofen with omeprazole cover for now; review analgesia in two weeks.",
    "Bloods today: full blood count, ESR, CRP, calcium, alkaline phosphatase and PSA.",
    "Continue the home exercise programme and stay as active as the pain allows.",
    "Advised to return immediately or go to the emergency department if he develops numbness in the "
    "groin, weakness in the legs or difficulty passing urine.",
    "Safety-netting advice given in writing; he understands and agrees with the plan.",
    "Follow-up in two weeks, sooner if symptoms worsen.",
]


def _pick(make: random.Random, pool: list[str], low: int, high: int) -> list[str]:
    return make.sample(pool, make.randint(low, min(high, len(pool))))


def _paragraph(sentences) -> str:
    return " ".join(f"{VARIANT} {sentence}" for sentence in sentences)


def _lines(lines, bullet: str = "- ") -> str:
    return "\n".join(f"{bullet}{line} {VARIANT}" for line in lines)


def progress_note(make: random.Random, visit: date) -> str:
    """One progress note (plain text) with VARIANT in its header, its sentences and its lines; about 4 KB."""
    numbers = {"weeks": make.randint(3, 9), "score": make.randint(5, 8), "best": make.randint(2, 4),
               "days": make.randint(2, 10), "sys": make.randint(122, 148), "dia": make.randint(72, 90),
               "hr": make.randint(62, 88), "t": make.randint(4, 9), "kg": round(make.uniform(78, 84), 1)}
    rest = _pick(make, _HPI, 4, 7) + _pick(make, _RED_FLAGS_STATED, 1, 2) + _pick(make, _RED_FLAGS_NEGATED, 1, 2)
    make.shuffle(rest)
    hpi = [line.format(**numbers) for line in [make.choice(_OPENINGS), *rest]]
    plan = _pick(make, _PLAN, 5, 6)
    sections = [
        ("HISTORY OF PRESENT ILLNESS", _paragraph(hpi)),
        ("REVIEW OF SYSTEMS", _lines((line.replace(": ", f": {VARIANT} ", 1) for line in _ROS), bullet="")),
        ("PAST MEDICAL HISTORY", _lines(_PMH)),
        ("MEDICATIONS", _lines(_MEDICATIONS)),
        ("FAMILY HISTORY", _paragraph(_pick(make, _FAMILY, 2, 3))),
        ("SOCIAL HISTORY", _paragraph(_SOCIAL)),
        ("PHYSICAL EXAM", _paragraph(line.format(**numbers) for line in _EXAM)),
        ("ASSESSMENT", _paragraph(_ASSESSMENT)),
        ("PLAN", "\n".join(f"{n}. {line} {VARIANT}" for n, line in enumerate(plan, 1))),
    ]
    header = (f"PROGRESS NOTE - Family Medicine\nDate of service: {visit.isoformat()}  Visit ref. {VARIANT}\n"
              "Author: Dr. A. Synthea, MD\n")
    body = "\n\n".join(f"{title}:\n{text}" for title, text in sections)
    return f"{header}\n{body}\n\nElectronically signed by Dr. A. Synthea, MD.\n"


def note_texts(count: int = 20, seed: int = 11, today: date | None = None) -> list[tuple[date, str]]:
    """(visit date, text with VARIANT) for `count` notes within the last 30 days, newest first."""
    make = random.Random(seed)
    today = today or date.today()
    visits = sorted((today - timedelta(days=make.randint(0, 29)) for _ in range(count)), reverse=True)
    return [(visit, progress_note(make, visit)) for visit in visits]


def note_text(template: str, variant: str = DEFAULT_VARIANT) -> str:
    return template.replace(VARIANT, variant)


def document_reference(patient_id: str, index: int, visit: date, text: str) -> dict:
    """A US Core DocumentReference holding the note inline (base64 text/plain)."""
    return {
        "resourceType": "DocumentReference", "id": f"bench-note-{index:03d}",
        "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-documentreference"]},
        "status": "current", "docStatus": "final", "type": NOTE_TYPE, "category": [CLINICAL_NOTE],
        "subject": {"reference": f"Patient/{patient_id}"},
        "date": f"{visit.isoformat()}T10:00:00+00:00",
        "content": [{"attachment": {"contentType": "text/plain; charset=utf-8",
                                    "data": base64.b64encode(text.encode()).decode()}}],
    }

"""However a request is mangled, the answer is a 2xx or a 4xx with a JSON body — never a 500.

Seeded mutations of real requests (the sandbox captures and the clinical cases): any node of the
JSON tree replaced by a value of another type, deleted, or duplicated.
"""

import copy
import json
import random
from pathlib import Path

import case_files
import pytest
from conftest import fixture_json, today

from cds_service.example_patients import hook_request

ODD_VALUES = [None, 0, -1, 1.5e308, "", "x" * 300, "2026-13-45", [], {}, [None], {"resourceType": "Bundle"},
              {"resourceType": "OperationOutcome"}, True, "Patient/../../etc", {"coding": "x"}, [{"code": 5}]]


def seeds() -> list[tuple[str, dict]]:
    out = []
    for name in ("patient-view", "order-select-pama", "order-select-pama-empty-draft"):
        capture = fixture_json(f"cds-hooks-spec/cds-hooks-sandbox/captured/{name}.json")
        body = {k: v for k, v in capture["body"].items() if k != "fhirServer"}  # no network in this test
        out.append((capture["path"].rsplit("/", 1)[-1], body))
    for path in sorted((Path(__file__).parent / "cases").glob("*.json"))[::12]:
        case = case_files.load_case(path, today())
        service_id, body = hook_request(case["hook"], case["resources"], draft_orders=case.get("draftOrders", []),
                                        encounter_id=case.get("encounterId"))
        out.append((service_id, body))
    return out


def paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from paths(value, prefix + (index,))


def mutate(body: dict, rng: random.Random) -> dict:
    body = copy.deepcopy(body)
    for _ in range(rng.randint(1, 3)):
        candidates = [p for p in paths(body) if p]
        if not candidates:
            break
        path = rng.choice(candidates)
        parent = body
        for step in path[:-1]:
            parent = parent[step]
        action = rng.random()
        if action < 0.7:
            parent[path[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
        elif action < 0.85 and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, list):
            parent.append(copy.deepcopy(parent[path[-1]]))
    return body


@pytest.mark.parametrize("seed", range(3))
def test_mangled_requests_never_get_a_500(client, seed):
    rng = random.Random(seed)
    for service_id, body in seeds():
        for _ in range(12):
            mangled = mutate(body, rng)
            response = client.post(f"/cds-services/{service_id}", json=mangled)
            assert response.status_code < 500, (response.get_data(as_text=True), json.dumps(mangled)[:2000])
            assert response.is_json

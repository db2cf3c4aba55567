"""Discovery: GET /cds-services lists the four services as CDS Hooks 2.0 describes them."""

import re

from cds_service.validation import problems

SERVICE_IDS = {"lbp-patient-view": "patient-view", "lbp-encounter-start": "encounter-start",
               "lbp-imaging-order-select": "order-select", "lbp-imaging-order-sign": "order-sign"}


def services(client):
    response = client.get("/cds-services")
    assert response.status_code == 200
    return {s["id"]: s for s in response.get_json()["services"]}


def test_discovery_is_valid_against_the_2_0_schema(client):
    assert problems("discovery", client.get("/cds-services").get_json()) == []


def test_discovery_lists_one_service_per_hook_with_the_agreed_ids(client):
    assert {sid: s["hook"] for sid, s in services(client).items()} == SERVICE_IDS


def test_every_service_has_title_description_and_usage_requirements(client):
    for service in services(client).values():
        assert service["title"] and service["description"]
        assert "patient/Condition.read" in service["usageRequirements"]


def test_prefetch_templates_fetch_what_the_clinical_core_reads(client):
    for service in services(client).values():
        prefetch = service["prefetch"]
        assert prefetch["patient"] == "Patient/{{context.patientId}}"
        assert prefetch["conditions"].startswith("Condition?patient={{context.patientId}}")
        for key, rtype in (("labs", "Observation"), ("survey", "Observation"), ("encounters", "Encounter"),
                           ("procedures", "Procedure"), ("medications", "MedicationRequest"),
                           ("medicationStatements", "MedicationStatement"),
                           ("medicationAdministrations", "MedicationAdministration")):
            assert prefetch[key].startswith(f"{rtype}?patient={{{{context.patientId}}}}")
        assert "&category=laboratory&" in prefetch["labs"]
        assert prefetch["activeServiceRequests"].startswith(
            "ServiceRequest?patient={{context.patientId}}&status=active")
        assert prefetch["clinicalNotes"].startswith(
            "DocumentReference?patient={{context.patientId}}&category=clinical-note&")
        assert prefetch["diagnosticReports"].startswith("DiagnosticReport?patient={{context.patientId}}&category=")


def test_usage_requirements_name_a_scope_for_every_resource_type_read(client):
    for service in services(client).values():
        for rtype in ("Patient", "Condition", "Observation", "Encounter", "Procedure", "MedicationRequest",
                      "MedicationStatement", "MedicationAdministration", "Medication", "ServiceRequest",
                      "DocumentReference", "DiagnosticReport", "Binary"):
            assert f"patient/{rtype}.read" in service["usageRequirements"], rtype


def test_prefetch_templates_use_only_2_0_context_tokens(client):
    for service in services(client).values():
        for template in service["prefetch"].values():
            for token in re.findall(r"\{\{(.*?)\}\}", template):
                assert re.fullmatch(r"context\.(patientId|encounterId|userId)", token.strip()), token

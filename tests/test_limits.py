"""Input limits: each a clear 400 or 413 in the JSON error shape, naming the field and the setting to change."""

import json

import pytest
from conftest import patient_view_body as request_body

from cds_service.app import create_app
from cds_service.settings import load_settings

PV = "/cds-services/lbp-patient-view"
OS = "/cds-services/lbp-imaging-order-select"


def limited_client(tmp_path, **limits):
    settings = load_settings(env={}, database_url=f"sqlite:///{tmp_path / 'limits.db'}", **limits)
    return create_app(settings).test_client()


def bundle(entries: int) -> dict:
    return {"resourceType": "Bundle", "type": "searchset",
            "entry": [{"resource": {"resourceType": "Condition", "id": f"c{i}"}} for i in range(entries)]}


def order_select_body(drafts: int) -> dict:
    orders = [{"resource": {"resourceType": "ServiceRequest", "id": f"sr{i}", "status": "draft",
                            "intent": "order", "subject": {"reference": "Patient/p1"}}} for i in range(drafts)]
    return request_body(hook="order-select", context={
        "userId": "Practitioner/1", "patientId": "p1", "selections": ["ServiceRequest/sr0"],
        "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": orders}})


def limit_error(response, status, setting):
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["status"] == status
    assert setting in error["message"] and f"LBP_{setting.upper()}" in error["message"]
    return error


def nested(levels: int):
    value: object = "leaf"
    for _ in range(levels):
        value = {"a": value}
    return value


def test_a_body_nested_deeper_than_max_json_depth_is_400_naming_the_setting_and_where(tmp_path):
    client = limited_client(tmp_path, max_json_depth=10)
    error = limit_error(client.post(PV, json=request_body(extension=nested(10))), 400, "max_json_depth")
    assert error["details"][0]["field"].startswith("extension.a.a")


def test_a_body_exactly_max_json_depth_deep_is_accepted(tmp_path):
    client = limited_client(tmp_path, max_json_depth=10)
    assert client.post(PV, json=request_body(extension=nested(9))).status_code == 200  # 1 + 9 levels


def test_max_json_depth_is_the_setting_not_a_constant(tmp_path):
    client = limited_client(tmp_path, max_json_depth=100)
    assert client.post(PV, json=request_body(extension=nested(80))).status_code == 200


def test_a_number_too_large_for_a_double_is_400_naming_the_field(client):
    raw = json.dumps(request_body(extension={"value": 1.5})).replace("1.5", "1e400")
    response = client.post(PV, data=raw, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"]["details"] == [{"field": "extension.value",
                                                         "reason": "beyond the range of a double"}]


def test_a_string_longer_than_max_string_length_is_413_naming_the_field(tmp_path):
    client = limited_client(tmp_path, max_string_length=1000)
    note = {"resourceType": "Condition", "id": "c1", "note": [{"text": "x" * 1001}]}
    body = request_body(prefetch={"patient": {"resourceType": "Patient", "id": "p1"},
                                  "conditions": {"resourceType": "Bundle", "entry": [{"resource": note}]}})
    error = limit_error(client.post(PV, json=body), 413, "max_string_length")
    assert error["details"] == [{"field": "prefetch.conditions.entry.0.resource.note.0.text",
                                 "reason": "1001 characters; max_string_length = 1000"}]


def test_a_key_longer_than_max_string_length_is_413(tmp_path):
    client = limited_client(tmp_path, max_string_length=1000)
    limit_error(client.post(PV, json=request_body(extension={"k" * 1001: 1})), 413, "max_string_length")


def test_a_string_of_exactly_max_string_length_is_accepted(tmp_path):
    client = limited_client(tmp_path, max_string_length=1000)
    assert client.post(PV, json=request_body(extension={"note": "x" * 1000})).status_code == 200


def test_a_prefetch_bundle_over_max_bundle_entries_is_413_naming_the_key(tmp_path):
    client = limited_client(tmp_path, max_bundle_entries=50)
    body = request_body(prefetch={"patient": {"resourceType": "Patient", "id": "p1"}, "conditions": bundle(51)})
    error = limit_error(client.post(PV, json=body), 413, "max_bundle_entries")
    assert error["details"][0]["field"] == "prefetch.conditions.entry"
    assert "51 entries" in error["details"][0]["reason"]


def test_a_prefetch_bundle_at_max_bundle_entries_is_accepted(tmp_path):
    client = limited_client(tmp_path, max_bundle_entries=50)
    body = request_body(prefetch={"patient": {"resourceType": "Patient", "id": "p1"}, "conditions": bundle(50)})
    assert client.post(PV, json=body).status_code == 200


def test_draft_orders_over_max_bundle_entries_are_413(tmp_path):
    client = limited_client(tmp_path, max_bundle_entries=5, max_draft_orders=100)
    error = limit_error(client.post(OS, json=order_select_body(6)), 413, "max_bundle_entries")
    assert error["details"][0]["field"] == "context.draftOrders.entry"


def test_draft_orders_over_max_draft_orders_are_413_naming_the_field(tmp_path):
    client = limited_client(tmp_path, max_draft_orders=3)
    error = limit_error(client.post(OS, json=order_select_body(4)), 413, "max_draft_orders")
    assert error["details"] == [{"field": "context.draftOrders.entry", "reason": "4 entries; max_draft_orders = 3"}]


def test_draft_orders_at_max_draft_orders_are_accepted(tmp_path):
    client = limited_client(tmp_path, max_draft_orders=3)
    assert client.post(OS, json=order_select_body(3)).status_code == 200


def test_a_body_over_max_content_length_is_413_naming_the_setting(tmp_path):
    client = limited_client(tmp_path, max_content_length=1000)
    error = limit_error(client.post(PV, data=json.dumps(request_body(extension={"x": "a" * 2000})),
                                    content_type="application/json"), 413, "max_content_length")
    assert error["details"] == [{"field": "body", "reason": "max_content_length = 1000"}]


@pytest.mark.parametrize("path", [PV, f"{PV}/feedback"])
def test_limits_apply_to_hooks_and_feedback(tmp_path, path):
    client = limited_client(tmp_path, max_string_length=100)
    limit_error(client.post(path, json={"feedback": [{"card": "c" * 101}]}), 413, "max_string_length")


def test_a_limit_error_is_logged_with_the_field_and_without_the_value(tmp_path, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="lbp_redflags")
    client = limited_client(tmp_path, max_string_length=100)
    limited = client.post(PV, json=request_body(extension={"secret": "Jane Doe " * 20}))
    limit_error(limited, 413, "max_string_length")
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "fields=extension.secret" in logged and "Jane" not in logged

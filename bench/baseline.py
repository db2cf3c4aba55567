"""The floor any Python CDS service pays: parse the same JSON body, answer {"cards": []}.

Served by gunicorn with the service's configuration (workers, gthread threads, an access log), so the
difference between the two is what the service itself adds.
"""

from __future__ import annotations

import json

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/cds-services/<service_id>")
def parse_only(service_id: str):
    json.loads(request.get_data())
    return jsonify({"cards": []})

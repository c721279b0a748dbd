"""Schema fuzzing of the live env server with schemathesis: every route of its OpenAPI document, bodies
generated from the schema (and its examples, which name real envs and oversized configs), checked for
no 5xx, documented status codes and content types, and responses that conform to the schema; then
the server must still be healthy. ``ATLASVA_FUZZ_EXAMPLES`` sets examples per route (the benchmark
``benchmarks/fuzz_serve.py`` runs it longer); ``ATLASVA_FUZZ_SEED`` set: a random draw instead of the
fixed one; ``ATLASVA_FUZZ_REPORT``: a JSON file for the tally."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from serve_support import PROBE, ServerProcess, health, rss_mb

from atlasva.serve.server import ServeConfig, create_app

EXAMPLES = int(os.environ.get("ATLASVA_FUZZ_EXAMPLES", "10"))
SEED = os.environ.get("ATLASVA_FUZZ_SEED")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
RUN: dict[str, list] = {"examples": [], "rss_mb": []}


@pytest.fixture(scope="module")
def fuzz_server():
    srv = ServerProcess("--max-envs", "32", "--session-ttl", "60").start()
    RUN["rss_mb"].append(rss_mb(srv.proc.pid))
    yield srv
    srv.stop()


# The schema the server serves, built in-process at collection (schemathesis' lazy fixture loader does not
# run on pytest 9.2); the first test checks that it is the live server's /openapi.json.
SCHEMA_DICT = create_app(ServeConfig()).openapi()
schema = schemathesis.openapi.from_dict(SCHEMA_DICT)


def test_the_fuzzed_schema_is_the_live_servers(fuzz_server) -> None:
    assert PROBE.get(fuzz_server.url + "/openapi.json").json() == SCHEMA_DICT


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=SEED is None, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_route_survives_generated_bodies(case, fuzz_server) -> None:
    response = case.call_and_validate(base_url=fuzz_server.url, checks=CHECKS, timeout=60)
    RUN["examples"].append((case.method, case.path, response.status_code))


def test_server_is_healthy_after_fuzzing(fuzz_server) -> None:
    assert fuzz_server.proc.poll() is None, "the server died"
    h = health(fuzz_server.url)
    assert h["status"] == "ok"
    routes = {(m, p) for m, p, _ in RUN["examples"]}
    assert len(routes) >= 6, f"fuzzed only {sorted(routes)}"  # /health, /envs, create, reset, step, close
    assert any(s == 200 for m, p, s in RUN["examples"] if p.endswith("/create")), "no generated create succeeded"
    assert h["sessions"] <= 32 and PROBE.get(fuzz_server.url + "/openapi.json").status_code == 200
    RUN["rss_mb"].append(rss_mb(fuzz_server.proc.pid))
    if report := os.environ.get("ATLASVA_FUZZ_REPORT"):  # benchmarks/fuzz_serve.py reads it
        by_route = Counter(f"{m} {p} -> {s}" for m, p, s in RUN["examples"])
        Path(report).write_text(json.dumps({"examples": len(RUN["examples"]), "per_route_max": EXAMPLES,
                                            "outcomes": dict(sorted(by_route.items())), "server_rss_mb": RUN["rss_mb"],
                                            "sessions_left": h["sessions"]}, indent=1))

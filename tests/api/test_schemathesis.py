"""Schemathesis against /api/openapi.json with an editor's token: no 5xx, every response as the
document describes it (status, content type, schema).

Path ids come from dictionaries of real demo rows most of the time (80 %), so the fuzzer reaches the
handlers rather than their 404s; DELETE of a document gets its own throwaway documents, so
the others stay alive for the whole run. `make test` runs it for COLLAB_FUZZ_SECONDS (45 s,
a fixed seed); `make fuzz` for 15 minutes with a fresh seed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

from .conftest import World

CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"


def _dictionaries(values: dict[str, list[str | int]]) -> str:
    """TOML for `values` as dictionaries bound to the path parameter of the same name."""
    lines = []
    for name, entries in values.items():
        lines += [f"[dictionaries.{name}]", f"values = {json.dumps(entries)}"]
    return "\n".join(lines)


def config(world: World, comments: list[str], throwaway: list[str]) -> str:
    doc_ids = [str(d) for d in world.demo.documents]
    toml = _dictionaries({"document_id": doc_ids, "workspace_id": [world.ws], "comment_id": comments,
                          "version_number": [1, 2], "throwaway": throwaway, "wait": [0, 0.2]})
    bindings = ", ".join(
        f'"path.{name}" = {{ dictionary = "{name}", probability = 0.8 }}'
        for name in ("document_id", "workspace_id", "comment_id", "version_number")
    )
    # A long-poll waits up to 30 s for a change that a fuzzer's random position never sees: keep
    # most waits short, and the client's timeout above the longest.
    return f"""request-timeout = 35
parameters = {{ {bindings}, "query.wait" = {{ dictionary = "wait", probability = 0.98 }} }}

{toml}

[[operations]]
include-name = "DELETE /api/documents/{{document_id}}"
parameters = {{ "path.document_id" = {{ dictionary = "throwaway", probability = 0.8 }} }}
"""


async def test_the_http_api_survives_schemathesis(world: World, tmp_path: Path) -> None:
    api, doc = world.api(), world.doc()
    comments = []
    for n in range(3):
        created = await api.post(f"/api/documents/{doc}/comments", json={"content": f"thread {n}"})
        comments.append(created.json()["id"])
    for n in range(2):
        assert (await api.post(f"/api/documents/{doc}/versions", json={"change_description": f"v{n}"})).is_success
    throwaway = []
    for n in range(5):
        created = await api.post(f"/api/workspaces/{world.ws}/documents", json={"title": f"to delete {n}"})
        throwaway.append(created.json()["id"])
    (tmp_path / "schemathesis.toml").write_text(config(world, comments, throwaway))

    seconds = os.environ.get("COLLAB_FUZZ_SECONDS", "45")
    seed = ["--seed", "1"] if "COLLAB_FUZZ_SECONDS" not in os.environ else []
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(tmp_path / "schemathesis.toml"),
        "run", f"{world.server.http}/api/openapi.json",
        "-H", f"Authorization: Bearer {world.demo.tokens['editor']}",
        "--checks", CHECKS, "--max-time", seconds, "--workers", "2", "--no-color", *seed,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path,
    )
    out, _ = await process.communicate()
    report = out.decode(errors="replace")
    summary = report[report.rfind("SUMMARY"):]
    print(summary)
    assert process.returncode == 0, report[-6000:]
    selected, tested = re.search(r"Selected: (\d+)/\d+", summary), re.search(r"Tested: (\d+)", summary)
    assert selected and tested and selected[1] == tested[1] and int(tested[1]) >= 25, summary
    generated = re.search(r"(\d+) generated", summary)
    assert generated and int(generated[1]) >= 200, summary

"""What `kandinsky-batch submit` prints for scripts: one JSON document, and no batch id for nothing."""

from __future__ import annotations

import json

import pytest

from kandinsky_batch.keys import job_id
from producer.cli.main import main

pytestmark = pytest.mark.integration


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_submit_wait_json_prints_one_object_with_the_final_batch(worker, cli_env, capsys):
    code, out, _ = run(capsys, "submit", "--prompt", "wait in json", "--height", "64", "--width", "64",
                       "--steps", "2", "--prior-steps", "2", "--wait", "--json")  # fmt: skip
    assert code == 0
    [line] = out.splitlines()  # one JSON document, not two
    result = json.loads(line)
    assert result["job_ids"] == [job_id(result["batch_id"], 0)]
    assert result["batch"]["done"] and result["batch"]["counts"]["succeeded"] == 1


def test_submit_with_no_valid_line_prints_no_batch_id(cli_env, capsys, tmp_path):
    path = tmp_path / "all-bad.jsonl"
    path.write_bytes(b'{"prompt": ""}\n{"prompt": "x", "height": 65}\n')
    for extra in ([], ["--json"]):
        code, out, err = run(capsys, "submit", "--file", str(path), *extra)
        assert code == 1 and out == ""
        assert "no job was submitted" in err and "line 2:" in err

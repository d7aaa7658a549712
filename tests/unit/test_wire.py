"""The message rules both sides use: batch ids and indices as submit makes them, or refused."""

from __future__ import annotations

import pytest
import redis
from pydantic import ValidationError

from kandinsky_batch.batch_ids import new_batch_id
from kandinsky_batch.errors import BadMessage, InvalidSpec
from kandinsky_batch.keys import MAX_INDEX, JobRef, Keys
from kandinsky_batch.settings import Settings
from kandinsky_batch.store.apikeys import ApiKeys
from kandinsky_batch.store.status import StatusStore
from kandinsky_batch.wire import check_batch_id, parse_message
from producer.submit import Submitter, submit_lines

BAD_BATCH_IDS = ["", "../../x", "a/b", "/abs", ".hidden", "-dash", "b" * 65, "sp ace", "nul\x00", "é",
                 "abc\n", "abc\r\n", "abc\n\n", "\nabc"]  # fmt: skip


@pytest.mark.parametrize("batch_id", BAD_BATCH_IDS)
def test_a_batch_id_that_could_leave_its_folder_is_refused_on_both_sides(batch_id: str):
    with pytest.raises(InvalidSpec, match="batch_id"):
        check_batch_id(batch_id)
    with pytest.raises(BadMessage):
        parse_message({"v": 1, "batch_id": batch_id, "jobs": [{"index": 0, "spec": {}}]})


@pytest.mark.parametrize("batch_id", ["3f2c9a1e7b004d21", "k" + "0" * 19, "my_run-2.v1", "B" * 64])
def test_the_batch_ids_submit_makes_and_readable_ones_pass(batch_id: str):
    assert check_batch_id(batch_id) == batch_id
    assert parse_message({"v": 1, "batch_id": batch_id, "jobs": []}).batch_id == batch_id
    assert check_batch_id(new_batch_id())


def test_an_index_past_the_last_fails_its_message_and_is_refused_at_submit():
    parsed = parse_message({"v": 1, "batch_id": "b", "jobs": [{"index": MAX_INDEX + 1, "spec": {}}]})
    assert parsed.entries == [] and parsed.problem is not None and str(MAX_INDEX) in parsed.problem
    store = StatusStore(redis.Redis(), Keys("unused"), 60)  # strict mode sends nothing
    lines = [(1, {"prompt": "first"}), (MAX_INDEX + 2, {"prompt": "too far"})]
    result = submit_lines(Submitter(Settings(), store, "b"), lines, {}, strict=True)
    assert [(e.line, "past the last job index" in e.reason) for e in result.errors] == [(MAX_INDEX + 2, True)]


@pytest.mark.parametrize(
    "job",
    ["abc-0\n", "abc\n-0", "abc-00", "abc-007", "abc-\u00b2", "abc-\u0663", "../x-0", f"b-{MAX_INDEX + 1}"],
)
def test_a_job_id_has_one_spelling_and_nothing_else_parses(job: str):
    assert JobRef.parse(job) is None


def test_tenants_and_prefixes_are_refused_with_a_trailing_newline():
    keys = ApiKeys(redis.Redis(), Keys("unused"))  # refused before any command
    with pytest.raises(ValueError, match="tenant"):
        keys.create("acme\n")
    for field in ("key_prefix", "queue_prefix", "device"):
        with pytest.raises(ValidationError, match=field):
            Settings(**{field: "cpu\n"})


@pytest.mark.parametrize("tenant", [".", "..", "-rf", ".hidden", "a/b", "", "x" * 65])
def test_a_tenant_cannot_name_a_folder_outside_its_own(tenant: str):
    # A tenant names `sources/<tenant>/`: no dot folders, no separators, no option-like names.
    keys = ApiKeys(redis.Redis(), Keys("unused"))  # refused before any command
    with pytest.raises(ValueError, match="tenant"):
        keys.create(tenant)

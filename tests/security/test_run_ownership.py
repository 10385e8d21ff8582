"""Who owns a run: recorded on disk when it is made, and the only caller (besides the box's own user) who can open or list it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kfoundry import config
from kfoundry.artifacts import LOCAL, OWNER_FILE, acting_for, current_owner, list_runs, new_run, open_run, owner_of
from kfoundry.errors import BadRequest
from kfoundry.server.auth import load_tokens

MADE_UP = "verify-20990101T000000-abcdef"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("KFOUNDRY_HOME", str(tmp_path))
    config.settings.cache_clear()
    yield tmp_path
    config.settings.cache_clear()


def refusal(run_id: str) -> str:
    """``open_run``'s message for ``run_id``, with the id itself blanked out."""
    with pytest.raises(BadRequest) as refused:
        open_run(run_id)
    return str(refused.value).replace(run_id, "<id>")


def test_a_run_records_its_maker_in_an_owner_file_that_is_all_a_restarted_server_needs(home: Path) -> None:
    with acting_for("alice"):
        run = new_run("verify")

    assert (home / "runs" / run.id / OWNER_FILE).read_text() == "alice"
    assert owner_of(run.path) == "alice"
    with acting_for("alice"):
        assert open_run(run.id).path == run.path
        assert list_runs() == [run.id]


def test_a_run_made_outside_any_caller_belongs_to_the_local_user() -> None:
    run = new_run("compile")

    assert current_owner() == LOCAL
    assert owner_of(run.path) == LOCAL


def test_a_run_from_before_owners_were_recorded_belongs_to_the_local_user_only() -> None:
    run = new_run("profile")
    (run.path / OWNER_FILE).unlink()

    assert owner_of(run.path) == LOCAL
    assert list_runs() == [run.id]
    with acting_for("alice"):
        assert list_runs() == []


def test_another_callers_run_is_refused_with_the_words_used_for_a_missing_run() -> None:
    with acting_for("alice"):
        run = new_run("verify")

    with acting_for("bob"):
        assert list_runs() == []
        assert refusal(run.id) == refusal(MADE_UP)


def test_the_local_user_lists_and_opens_every_callers_runs() -> None:
    with acting_for("alice"):
        alices = new_run("verify")
    with acting_for("bob"):
        bobs = new_run("verify")

    assert set(list_runs()) == {alices.id, bobs.id}
    assert open_run(alices.id).path == alices.path and open_run(bobs.id).path == bobs.path


def test_a_callers_list_holds_its_own_newest_runs_up_to_the_limit_however_many_newer_ones_others_made() -> None:
    with acting_for("alice"):
        mine = new_run("analyze")
    with acting_for("bob"):
        for _ in range(3):
            os.utime(new_run("analyze").path, (4102444800, 4102444800))  # 2100: newer than anything of alice's

    with acting_for("alice"):
        assert list_runs(limit=1) == [mine.id]


def test_acting_for_ends_with_its_block() -> None:
    with acting_for("alice"):
        assert current_owner() == "alice"
    assert current_owner() == LOCAL


def test_no_token_may_be_named_local_since_that_name_sees_every_run() -> None:
    with pytest.raises(BadRequest, match="reserved"):
        load_tokens(environ={"KFOUNDRY_TOKENS": "local:local-token-0123456789abcdef"})

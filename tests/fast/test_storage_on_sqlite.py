"""The repository layer on SQLite (the database of a single-machine deployment), on a schema made only by Alembic
migrations (the same tests on Postgres: tests/test_storage.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.storage_contract import (  # noqa: F401
    database,
    test_a_conversations_pinned_model_is_stored_and_changed,
    test_a_refused_final_write_is_stored_failed_at_once,
    test_api_keys_store_only_hashes_and_revoke,
    test_conversation_with_messages_round_trip,
    test_delete_cascades_to_messages,
    test_list_pages_newest_first_with_cursor,
    test_message_items_and_conversation_metadata_are_stored_as_json,
    test_migrated_schema_matches_models,
    test_migration_0003_downgrades_and_upgrades_keeping_messages,
    test_other_owner_sees_nothing,
    test_ping,
    test_recent_reads_newest_first_up_to_a_budget_and_size_counts_bytes,
    test_stored_responses_chain_expire_and_outlive_their_conversation,
    test_two_writers_cannot_take_the_same_position,
    test_users_get_or_create_is_idempotent,
)


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    from storage import upgrade_database

    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'codeface.db'}"
    upgrade_database(url)
    return url


@pytest.fixture
def fresh_database_url(tmp_path: Path) -> str:
    from storage import upgrade_database

    url = f"sqlite+aiosqlite:///{tmp_path / 'migration.db'}"
    upgrade_database(url)
    return url

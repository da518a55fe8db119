"""Revocation reaching every process within seconds, with no restart: two apps on one store
(a clock each, so no test waits), and real gunicorn machines; when a key was last used."""

from __future__ import annotations

import pytest
import requests

from service import create_app
from service.store.apikeys import CACHE_SECONDS

from .conftest import Clock, admin_headers, make_event, test_config
from .processes import ADMIN_KEY as E2E_ADMIN_KEY
from .processes import free_port, wait_for
from .test_keys import UNAUTHORIZED, bearer, make_key


@pytest.fixture
def second_app(migrated_db_url):
    """Another process of the relay on the same store, with a clock of its own."""
    app = create_app(test_config(migrated_db_url))
    app.extensions["service"].clock = Clock()
    yield app
    app.extensions["service"].engine.dispose()


def test_a_revoked_key_stops_working_on_every_process_within_seconds(client, second_app):
    other = second_app.test_client()
    other_clock = second_app.extensions["service"].clock
    made = make_key(client, ["events:write"])
    key = made["key"]
    assert other.post("/v1/events", json=make_event(), headers=bearer(key)).status_code == 202
    assert client.delete(f"/v1/keys/{made['id']}", headers=admin_headers()).status_code == 204
    # The process that revoked it refuses it at once; the other within CACHE_SECONDS.
    assert client.post("/v1/events", json=make_event(), headers=bearer(key)).json == UNAUTHORIZED
    other_clock.advance(CACHE_SECONDS)
    resp = other.post("/v1/events", json=make_event(), headers=bearer(key))
    assert (resp.status_code, resp.json) == (401, UNAUTHORIZED)


def test_a_new_key_works_at_once_on_every_process(client, second_app):
    key = make_key(client, ["read"])["key"]
    assert second_app.test_client().get("/v1/locations", headers=bearer(key)).status_code == 200


def test_last_use_is_kept_to_the_minute(client, clock):
    made = make_key(client, ["read"])
    start = clock()

    def last_used():
        return client.get("/v1/keys", headers=admin_headers()).json["keys"][0]["lastUsedAt"]

    client.get("/v1/locations", headers=bearer(made["key"]))
    assert last_used() == start.isoformat()
    clock.advance(30)
    client.get("/v1/locations", headers=bearer(made["key"]))
    assert last_used() == start.isoformat()  # not moved: less than a minute
    clock.advance(31)
    client.get("/v1/locations", headers=bearer(made["key"]))
    assert last_used() == clock().isoformat()


def test_revocation_reaches_every_worker_of_two_machines_with_no_restart(start_relay, tmp_path):
    """Real processes: two gunicorn masters (2 workers each) on one store. A key revoked
    through one machine is refused by every worker of both within a few seconds."""
    a = start_relay()
    b = a.start_web(free_port())
    status, made = a.request("POST", "/v1/keys", key=E2E_ADMIN_KEY,
                             body={"name": "e2e", "scopes": ["read"]})
    assert status == 201, made
    key = made["key"]

    def answers(machine, n: int = 6) -> set[int]:  # a new connection each: any worker
        return {requests.get(f"{machine.url}/v1/locations", headers=bearer(key),
                             timeout=10).status_code for _ in range(n)}

    assert answers(a) | answers(b) == {200}
    status, _ = b.request("DELETE", f"/v1/keys/{made['id']}", key=E2E_ADMIN_KEY)
    assert status == 204
    wait_for(lambda: answers(a) | answers(b) == {401}, timeout=CACHE_SECONDS + 8,
             what="every worker to refuse the revoked key")
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "logs").iterdir())
    assert "apikey.revoked" in logs and key not in logs and key[:12] not in logs



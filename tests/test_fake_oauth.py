"""The fake HighLevel's OAuth endpoints answer real HTTP the way HighLevel does."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import requests

from tests.fake_highlevel import SPEC_AVAILABLE, SPEC_DIR, FakeHighLevel
from tests.fake_oauth import (
    INVALID_ACCESS_TOKEN,
    INVALID_CLIENT,
    INVALID_CODE,
    INVALID_REFRESH_TOKEN,
    LOCATION_NOT_ACTIVE,
    mask,
)

CLIENT = {"client_id": "test-client-id", "client_secret": "test-client-secret"}
VERSION = {"Version": "2021-07-28"}
INVOICE = "/invoices/stats/last-visited-at"
needs_spec = pytest.mark.skipif(
    not SPEC_AVAILABLE, reason=f"../shared/highlevel-openapi not present: {SPEC_DIR}"
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hl() -> Iterator[FakeHighLevel]:
    with FakeHighLevel(tokens=set(), enforce_rate_limit=False) as server:
        yield server


def token_call(url: str, **form: str) -> requests.Response:
    return requests.post(url + "/oauth/token", data={**CLIENT, **form}, timeout=5)


def refresh(hl: FakeHighLevel, refresh_token: str, **form: str) -> requests.Response:
    form = {"user_type": "Location", **form}
    return token_call(hl.url, grant_type="refresh_token", refresh_token=refresh_token, **form)


def location_token(
    hl: FakeHighLevel, bearer: str, company_id: str, location_id: str, headers=None
) -> requests.Response:
    return requests.post(
        hl.url + "/oauth/locationToken",
        data={"companyId": company_id, "locationId": location_id},
        headers={**VERSION, "Authorization": f"Bearer {bearer}"} if headers is None else headers,
        timeout=5,
    )


def patch(hl: FakeHighLevel, token: str) -> requests.Response:
    return requests.patch(
        hl.url + INVOICE,
        json={"invoiceId": "inv_1"},
        headers={**VERSION, "Authorization": f"Bearer {token}"},
        timeout=5,
    )


def test_code_exchange_gives_a_location_pair_once(hl: FakeHighLevel) -> None:
    code = hl.oauth.authorize(location_id="loc_1", company_id="co_1",
                              redirect_uri="https://relay.test/oauth/callback")
    form = {"grant_type": "authorization_code", "code": code, "user_type": "Location",
            "redirect_uri": "https://relay.test/oauth/callback"}
    r = token_call(hl.url, **form)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body.pop("access_token") in hl.tokens
    assert hl.oauth.refresh_token_valid(body.pop("refresh_token"))
    assert body == {
        "token_type": "Bearer",
        "expires_in": 86399,
        "scope": hl.oauth.scope,
        "userType": "Location",
        "companyId": "co_1",
        "locationId": "loc_1",
        "isBulkInstallation": False,
        "userId": hl.oauth.user_id,
    }
    again = token_call(hl.url, **form)
    assert (again.status_code, again.json()) == (400, INVALID_CODE)
    assert hl.violations == []  # refused, but well-formed


def test_code_exchange_checks_redirect_uri_without_spending_the_code(hl: FakeHighLevel) -> None:
    code = hl.oauth.authorize(location_id="loc_1", redirect_uri="https://relay.test/cb")
    r = token_call(hl.url, grant_type="authorization_code", code=code,
                   redirect_uri="https://elsewhere.test/cb")
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    r = token_call(hl.url, grant_type="authorization_code", code=code,
                   redirect_uri="https://relay.test/cb")
    assert r.status_code == 200


def test_company_install_lists_approved_locations(hl: FakeHighLevel) -> None:
    code = hl.oauth.authorize(user_type="Company", company_id="co_9",
                              approved_locations=["loc_1", "loc_2"])
    r = token_call(hl.url, grant_type="authorization_code", code=code, user_type="Company")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["userType"] == "Company" and body["companyId"] == "co_9"
    assert body["approvedLocations"] == ["loc_1", "loc_2"] and body["isBulkInstallation"] is True
    assert "locationId" not in body and body["refresh_token"]


def test_refresh_rotates_and_kills_the_old_refresh_token(hl: FakeHighLevel) -> None:
    first = hl.oauth.issue(location_id="loc_1")
    assert first["access_token"] in hl.tokens
    r = refresh(hl, first["refresh_token"])
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    assert (second["locationId"], second["userType"], second["expires_in"]) == (
        "loc_1", "Location", 86399)
    assert not hl.oauth.refresh_token_valid(first["refresh_token"])

    reused = refresh(hl, first["refresh_token"])
    assert (reused.status_code, reused.json()) == (400, INVALID_REFRESH_TOKEN)
    assert INVALID_REFRESH_TOKEN == {
        "error": "invalid_grant",
        "error_description": "Invalid grant: refresh token is invalid",
    }
    assert refresh(hl, second["refresh_token"]).status_code == 200

    # The old access token lives until it expires, unless a test revokes it.
    assert patch(hl, first["access_token"]).status_code == 200
    hl.tokens.discard(first["access_token"])
    assert patch(hl, first["access_token"]).status_code == 401
    assert patch(hl, second["access_token"]).status_code == 200

    assert hl.oauth.refresh_calls == 3
    recorded = hl.oauth.token_requests[0]
    assert recorded == {**CLIENT, "client_secret": mask(CLIENT["client_secret"]),
                        "grant_type": "refresh_token", "user_type": "Location",
                        "refresh_token": mask(first["refresh_token"])}
    assert CLIENT["client_secret"] not in repr(hl.oauth.token_requests)
    assert first["refresh_token"] not in repr(hl.oauth.token_requests)
    assert hl.violations == []


def test_minted_access_tokens_expire_by_the_fake_clock() -> None:
    clock = FakeClock()
    with FakeHighLevel(tokens=set(), clock=clock, enforce_rate_limit=False) as hl:
        pair = hl.oauth.issue(location_id="loc_1", expires_in=60)
        assert pair["expires_in"] == 60
        assert patch(hl, pair["access_token"]).status_code == 200
        clock.now += 60
        r = patch(hl, pair["access_token"])
        assert r.status_code == 401 and r.json()["message"] == INVALID_ACCESS_TOKEN["message"]
        r = refresh(hl, pair["refresh_token"])  # the refresh token outlives it
        assert r.status_code == 200
        assert patch(hl, r.json()["access_token"]).status_code == 200
        assert hl.violations == []


def test_concurrent_refreshes_with_one_refresh_token_have_one_winner(hl: FakeHighLevel) -> None:
    pair = hl.oauth.issue(location_id="loc_1")
    start = threading.Barrier(8)
    answers: list[requests.Response] = []
    lock = threading.Lock()

    def worker() -> None:
        start.wait()
        r = refresh(hl, pair["refresh_token"])
        with lock:
            answers.append(r)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] + [400] * 7
    assert [r.json() for r in answers if r.status_code == 400] == [INVALID_REFRESH_TOKEN] * 7
    [winner] = [r.json() for r in answers if r.status_code == 200]
    assert hl.oauth.refresh_token_valid(winner["refresh_token"])
    assert hl.oauth.refresh_calls == 8
    assert hl.violations == []


# A child process: import, say "ready", wait for "go", refresh once, print the status.
REFRESH_SCRIPT = """
import sys, requests
url, refresh_token = sys.argv[1], sys.argv[2]
form = {"client_id": "test-client-id", "client_secret": "test-client-secret",
        "grant_type": "refresh_token", "refresh_token": refresh_token, "user_type": "Location"}
session = requests.Session()
print("ready", flush=True)
sys.stdin.readline()
print(session.post(url + "/oauth/token", data=form, timeout=10).status_code, flush=True)
"""


def test_concurrent_refreshes_from_processes_have_one_winner(hl: FakeHighLevel) -> None:
    pair = hl.oauth.issue(location_id="loc_1")
    children = [
        subprocess.Popen(
            [sys.executable, "-c", REFRESH_SCRIPT, hl.url, pair["refresh_token"]],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for _ in range(4)
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for child in children:  # all at once
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        statuses = sorted(int(child.stdout.readline()) for child in children if child.stdout)
    finally:
        for child in children:
            for pipe in (child.stdin, child.stdout):
                if pipe is not None:
                    pipe.close()
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()  # only our own children, by their handle
                child.wait()
    assert statuses == [200, 400, 400, 400]
    assert hl.oauth.refresh_calls == 4


def test_inactive_location_keeps_its_refresh_token(hl: FakeHighLevel) -> None:
    pair = hl.oauth.issue(location_id="loc_1")
    hl.oauth.inactive_locations.add("loc_1")
    r = refresh(hl, pair["refresh_token"])
    assert (r.status_code, r.json()) == (400, LOCATION_NOT_ACTIVE)
    assert r.json()["message"] == "Location is not active"
    assert hl.oauth.refresh_token_valid(pair["refresh_token"])
    hl.oauth.inactive_locations.discard("loc_1")
    assert refresh(hl, pair["refresh_token"]).status_code == 200
    assert hl.violations == []


def test_location_token_from_a_company_token(hl: FakeHighLevel) -> None:
    agency = hl.oauth.issue(user_type="Company", company_id="co_1",
                            approved_locations=["loc_1", "loc_2"])
    r = location_token(hl, agency["access_token"], "co_1", "loc_2")
    assert r.status_code == 200, r.text
    body = r.json()
    minted = body.pop("access_token")
    assert body == {"token_type": "Bearer", "expires_in": 86399, "scope": hl.oauth.scope,
                    "locationId": "loc_2", "userId": hl.oauth.user_id}
    assert minted in hl.tokens
    assert patch(hl, minted).status_code == 200
    assert hl.oauth.location_token_calls == 1
    assert hl.oauth.location_token_requests == [{"companyId": "co_1", "locationId": "loc_2"}]
    assert hl.violations == []


def test_location_token_refusals(hl: FakeHighLevel) -> None:
    agency = hl.oauth.issue(user_type="Company", company_id="co_1", approved_locations=["loc_1"])
    location = hl.oauth.issue(location_id="loc_1", company_id="co_1")
    assert location_token(hl, location["access_token"], "co_1", "loc_1").status_code == 401
    assert location_token(hl, "not-a-token", "co_1", "loc_1").json() == INVALID_ACCESS_TOKEN
    assert location_token(hl, agency["access_token"], "co_2", "loc_1").status_code == 401
    assert location_token(hl, agency["access_token"], "co_1", "loc_9").status_code == 400
    hl.oauth.inactive_locations.add("loc_1")
    r = location_token(hl, agency["access_token"], "co_1", "loc_1")
    assert (r.status_code, r.json()) == (400, LOCATION_NOT_ACTIVE)
    hl.tokens.discard(agency["access_token"])  # revoked
    assert location_token(hl, agency["access_token"], "co_1", "loc_1").status_code == 401
    assert hl.violations == []  # all well-formed
    # A missing Version header is a client bug: refused and recorded.
    agency2 = hl.oauth.issue(user_type="Company", company_id="co_1")
    r = location_token(hl, agency2["access_token"], "co_1", "loc_1",
                       headers={"Authorization": f"Bearer {agency2['access_token']}"})
    assert r.status_code == 400 and "Version" in r.json()["message"]
    [violation] = hl.violations
    assert "Version" in violation


@pytest.mark.parametrize(
    "client", [{"client_secret": "wrong"}, {"client_id": "someone-else"}]
)
def test_bad_client_credentials_are_refused(hl: FakeHighLevel, client: dict) -> None:
    pair = hl.oauth.issue(location_id="loc_1")
    r = requests.post(hl.url + "/oauth/token", timeout=5, data={
        **CLIENT, **client, "grant_type": "refresh_token", "refresh_token": pair["refresh_token"]})
    assert (r.status_code, r.json()) == (401, INVALID_CLIENT)
    assert hl.oauth.refresh_token_valid(pair["refresh_token"])  # not spent
    assert hl.violations == []


def test_client_secret_is_settable(hl: FakeHighLevel) -> None:
    pair = hl.oauth.issue()
    hl.oauth.client_secret = "rotated-secret"
    assert refresh(hl, pair["refresh_token"]).status_code == 401
    r = refresh(hl, pair["refresh_token"], client_secret="rotated-secret")
    assert r.status_code == 200


def test_json_body_is_refused_like_missing_fields(hl: FakeHighLevel) -> None:
    pair = hl.oauth.issue()
    r = requests.post(hl.url + "/oauth/token", timeout=5, json={
        **CLIENT, "grant_type": "refresh_token", "refresh_token": pair["refresh_token"]})
    assert r.status_code == 422
    body = r.json()
    assert body["statusCode"] == 422 and body["error"] == "Unprocessable Entity"
    assert any("client_id" in m for m in body["message"])
    assert hl.oauth.refresh_token_valid(pair["refresh_token"])
    [violation] = hl.violations
    assert "/oauth/token" in violation


def test_missing_refresh_token_is_invalid_request(hl: FakeHighLevel) -> None:
    r = token_call(hl.url, grant_type="refresh_token")
    assert r.status_code == 400
    assert r.json() == {"error": "invalid_request",
                        "error_description": "Missing parameter: `refresh_token`"}
    assert len(hl.violations) == 1


def test_unknown_oauth_route_is_404(hl: FakeHighLevel) -> None:
    r = requests.get(hl.url + "/oauth/token", timeout=5)
    assert r.status_code == 404 and r.json()["message"] == "Cannot GET /oauth/token"
    assert requests.post(hl.url + "/oauth/nothing", data={}, timeout=5).status_code == 404
    assert len(hl.violations) == 2


def test_scripted_failures_and_down(hl: FakeHighLevel) -> None:
    pair = hl.oauth.issue(location_id="loc_1")
    hl.script(503, path="/oauth/token")
    assert refresh(hl, pair["refresh_token"]).status_code == 503
    assert hl.oauth.refresh_token_valid(pair["refresh_token"])  # a canned answer spends nothing
    hl.set_down(True)
    assert refresh(hl, pair["refresh_token"]).status_code == 503
    hl.set_down(False)
    # "timeout": HighLevel did the refresh; the answer never arrived in time.
    hl.timeout_sleep = 0.5
    hl.script("timeout", path="/oauth/token")
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(hl.url + "/oauth/token", timeout=0.1, data={
            **CLIENT, "grant_type": "refresh_token", "refresh_token": pair["refresh_token"]})
    assert not hl.oauth.refresh_token_valid(pair["refresh_token"])
    # Unpathed scripts stay with the PATCH endpoints.
    hl.script(500)
    assert refresh(hl, hl.oauth.issue()["refresh_token"]).status_code == 200
    assert patch(hl, pair["access_token"]).status_code == 500


def test_contract_alone_accepts_valid_oauth_calls() -> None:
    with FakeHighLevel(tokens=set(), validate_openapi=False) as hl:
        pair = hl.oauth.issue(location_id="loc_1")
        assert refresh(hl, pair["refresh_token"]).status_code == 200
        agency = hl.oauth.issue(user_type="Company", company_id="co_1")
        assert location_token(hl, agency["access_token"], "co_1", "loc_1").status_code == 200
        assert hl.violations == []
        r = token_call(hl.url, grant_type="refresh_token", refresh_token="x", user_type="location")
        assert r.status_code == 422
        assert [v.split(":")[0] for v in hl.violations] == ["contract"]


@needs_spec
def test_valid_oauth_calls_match_highlevels_openapi(hl: FakeHighLevel) -> None:
    assert hl.validate_openapi
    code = hl.oauth.authorize(location_id="loc_1")
    r = token_call(hl.url, grant_type="authorization_code", code=code, user_type="Location",
                   redirect_uri="https://relay.test/cb")
    assert r.status_code == 200
    assert refresh(hl, r.json()["refresh_token"]).status_code == 200
    agency = hl.oauth.issue(user_type="Company", company_id="co_1")
    assert location_token(hl, agency["access_token"], "co_1", "loc_1").status_code == 200
    assert hl.violations == []
    # And the document catches what it documents: no bearer on locationToken.
    r = location_token(hl, "x", "co_1", "loc_1", headers=VERSION)
    assert r.status_code == 401
    [violation] = hl.violations
    assert violation.startswith("openapi:") and "locationToken" in violation

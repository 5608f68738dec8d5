"""The real server process: no data without login, roles, the JSON API, loopback by default."""

from __future__ import annotations

import httpx
import pytest
from collect_support import PASSWORD, Server, make_store, seed


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    url = f"sqlite:///{tmp}/c.db"
    store = make_store(url, overlap=2)
    seed(store, prompts=6, users=("ann", "bea", "admin1", "victim"))
    srv = Server(url, tmp).start()
    yield srv
    srv.stop()


def token(server, user):
    r = httpx.post(f"{server.base}/api/v1/login", json={"username": user, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


DATA_ROUTES = [("GET", "/api/v1/next"), ("GET", "/api/v1/progress"), ("POST", "/api/v1/votes"),
               ("POST", "/api/v1/undo"), ("GET", "/api/v1/admin/stats"), ("GET", "/api/v1/admin/export"),
               ("GET", "/ui/config"), ("GET", "/ui/gradio_api/info"), ("POST", "/ui/gradio_api/queue/join"),
               ("GET", "/ui/gradio_api/queue/data?session_hash=x"), ("POST", "/ui/gradio_api/upload"),
               ("GET", "/ui/gradio_api/file=/etc/hostname"), ("GET", "/ui/gradio_api/openapi.json")]


def test_no_data_route_answers_without_login(server):
    for method, path in DATA_ROUTES:
        r = httpx.request(method, server.base + path, json={} if method == "POST" else None)
        assert r.status_code in (401, 403), (path, r.status_code, r.text[:200])
    bogus = {"Authorization": "Bearer not-a-token", "Cookie": "alignkit_session=nope"}
    for method, path in DATA_ROUTES:
        assert httpx.request(method, server.base + path, headers=bogus).status_code in (401, 403), path
    for path in ("/", "/ui/"):
        r = httpx.get(server.base + path, headers={"accept": "text/html"})
        assert r.status_code == 303 and r.headers["location"] == "/login"
    login = httpx.get(server.base + "/login")
    assert login.status_code == 200 and "question" not in login.text


def test_annotators_cannot_reach_admin_routes(server):
    ann, admin = token(server, "ann"), token(server, "admin1")
    assert httpx.get(f"{server.base}/api/v1/admin/stats", headers=ann).status_code == 403
    assert httpx.get(f"{server.base}/api/v1/admin/export", headers=ann).status_code == 403
    assert httpx.get(f"{server.base}/api/v1/admin/stats", headers=admin).json()["items"] == 6
    r = httpx.get(f"{server.base}/api/v1/admin/export", headers=admin)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/jsonl")


def test_vote_replay_undo_and_conflicts_over_http(server):
    bea = token(server, "bea")
    item = httpx.get(f"{server.base}/api/v1/next", headers=bea).json()["item"]
    vote = {"assignment_id": item["assignment_id"], "choice": "b", "strength": "clear",
            "idempotency_key": item["idempotency_key"], "rationale": "more complete"}
    first = httpx.post(f"{server.base}/api/v1/votes", headers=bea, json=vote).json()
    again = httpx.post(f"{server.base}/api/v1/votes", headers=bea, json=vote).json()
    assert not first["replay"] and again["replay"] and again["vote_id"] == first["vote_id"]
    assert again["next"]["assignment_id"] == first["next"]["assignment_id"]
    other = dict(vote, idempotency_key="fresh-key")
    assert httpx.post(f"{server.base}/api/v1/votes", headers=bea, json=other).status_code == 409
    assert httpx.post(f"{server.base}/api/v1/votes", headers=bea, json=dict(vote, choice="maybe",
                                                                             idempotency_key="k2")).status_code == 409
    assert httpx.post(f"{server.base}/api/v1/votes", headers=bea, json={"choice": "a"}).status_code == 422
    undone = httpx.post(f"{server.base}/api/v1/undo", headers=bea).json()["item"]
    assert undone["item_id"] == item["item_id"]
    assert httpx.get(f"{server.base}/api/v1/progress", headers=bea).json()["votes"] == 0
    # the cookie works as well as the bearer token, and logging out ends the session
    with httpx.Client(base_url=server.base) as c:
        assert c.post("/login", data={"username": "bea", "password": PASSWORD}).status_code == 303
        assert c.get("/api/v1/progress").status_code == 200
        c.post("/logout")
        c.cookies.clear()
        assert c.get("/api/v1/progress").status_code == 401


def test_failed_logins_are_throttled(server):
    for _ in range(5):
        r = httpx.post(f"{server.base}/login", data={"username": "victim", "password": "wrong-one"})
        assert r.status_code == 401 and "Wrong user name or password" in r.text
    r = httpx.post(f"{server.base}/api/v1/login", json={"username": "victim", "password": PASSWORD})
    assert r.status_code == 429


def test_binds_loopback_only_by_default(server):
    import psutil

    listening = [c.laddr for c in psutil.Process(server.proc.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening)

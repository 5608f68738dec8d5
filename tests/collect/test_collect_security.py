"""collect.security in-process: the login throttle under threads, its memory bound, the origin check."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from starlette.datastructures import Headers

from collect.security import Throttle, same_origin


def test_parallel_attempts_are_counted_before_the_check():
    """Issue 14 item 2: 20 threads at once for one name: exactly 5 may go on to a password check."""
    throttle = Throttle(per_name=5, per_address=1000)
    barrier = threading.Barrier(20)

    def go(i):
        barrier.wait()
        return throttle.begin("victim", f"10.0.0.{i}")

    with ThreadPoolExecutor(20) as pool:
        allowed = list(pool.map(go, range(20)))
    assert allowed.count(True) == 5
    assert throttle.blocked("victim")


def test_a_correct_password_takes_its_attempt_back_and_addresses_are_limited_too():
    throttle = Throttle(per_name=5, per_address=3)
    for _ in range(10):  # a user who logs in correctly again and again is never blocked
        assert throttle.begin("ann", "1.1.1.1")
        throttle.succeeded("ann", "1.1.1.1")
    assert [throttle.begin(f"name{i}", "6.6.6.6") for i in range(4)] == [True, True, True, False]  # one address
    assert throttle.begin("name3", "7.7.7.7")  # …while the name itself is still fine from elsewhere
    # an invalid name (never looked up) counts for its address only: no shared bucket that others could fill
    assert [throttle.begin(None, "8.8.8.8") for _ in range(4)] == [True, True, True, False]
    assert throttle.begin(None, "5.5.5.5")


def test_throttle_memory_is_bounded_and_lookups_add_nothing():
    """Issue 14 item 3: every attempted name used to stay forever (and a lookup alone added one)."""
    throttle = Throttle(per_name=5, per_address=10**9, max_keys=1000)
    for i in range(200):
        assert not throttle.blocked(f"looked-up-{i}")
    assert len(throttle.hits) == 0
    for i in range(20_000):
        throttle.begin(f"name-{i}" + "x" * 200, "9.9.9.9")
    assert len(throttle.hits) <= 1000
    assert all(len(k) <= 66 for k in throttle.hits)  # names are cut to 64 characters


def _h(**kw):
    return Headers({k.replace("_", "-"): v for k, v in kw.items()})


def test_same_origin_check():
    assert same_origin(_h(host="127.0.0.1:7860"))  # a plain client sends no Origin
    assert same_origin(_h(host="127.0.0.1:7860", origin="http://127.0.0.1:7860", sec_fetch_site="same-origin"))
    assert same_origin(_h(host="10.0.0.5:7860", x_forwarded_host="labels.example.org",
                          origin="https://labels.example.org"))  # behind a TLS proxy that keeps the host
    assert not same_origin(_h(host="127.0.0.1:7860", origin="http://127.0.0.1:9999"))  # another loopback port
    assert not same_origin(_h(host="127.0.0.1:7860", origin="null"))
    assert not same_origin(_h(host="127.0.0.1:7860", sec_fetch_site="same-site"))
    assert not same_origin(_h(host="127.0.0.1:7860", referer="http://evil.example/page"))


def test_session_cookie_is_secure_beyond_loopback_or_over_tls(tmp_path):
    """`serve --host` beyond loopback passes secure_cookies=True; a TLS proxy's X-Forwarded-Proto does it per
    request."""
    from collect_support import PASSWORD, make_store, seed
    from fastapi.testclient import TestClient

    from collect.server import create_app

    store = make_store(f"sqlite:///{tmp_path}/c.db")
    seed(store, prompts=1, users=("ann",))
    login = {"username": "ann", "password": PASSWORD}
    for secure, headers, expect in ((True, {}, True), (False, {"X-Forwarded-Proto": "https"}, True),
                                    (False, {}, False)):
        with TestClient(create_app(store, secure_cookies=secure), base_url="http://127.0.0.1") as client:
            cookie = client.post("/api/v1/login", json=login, headers=headers).headers["set-cookie"]
        assert ("secure" in cookie.lower().split("; ")) == expect, cookie
        assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()

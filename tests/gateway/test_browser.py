"""The web page in Debian's chromium (headless, driven by Playwright): stream, reload, resume."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.gateway.conftest import GatewayServer, parse_sse

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
pytestmark = pytest.mark.browser
LAST = "Array.from(document.querySelectorAll('.msg.assistant')).pop()"


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is required under CI=true")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


def _answer_text(gateway: GatewayServer, session_id: str, answer_id: str) -> str:
    with gateway.client() as http:
        raw = http.get(f"/v1/sessions/{session_id}/answers/{answer_id}/stream").text
    events = parse_sse(raw)
    return "".join(orjson.loads(e["data"])["text"] for e in events if e.get("event") == "content")


def test_reload_mid_answer_completes_without_gap_or_repeat(
    sim_factory: Any, gateway_factory: Any, browser: Any
) -> None:
    sim = sim_factory(token_ms=25)
    gateway: GatewayServer = gateway_factory(upstream=sim.base_url)
    page = browser.new_page()
    page.goto(gateway.url)
    page.fill("#input", "Tell me a long story about rivers and mountains.")
    page.press("#input", "Enter")
    page.wait_for_function(
        f"() => {{ const el = {LAST}; return el && el.dataset.state === 'streaming' "
        "&& el.dataset.raw.length > 20; }",
        timeout=15_000,
    )
    partial = page.evaluate(f"() => {LAST}.dataset.raw")
    assert page.locator("#stop").is_visible()
    page.reload()
    page.wait_for_function(
        f"() => {{ const el = {LAST}; "
        "return el && el.dataset.answerId && el.dataset.state === 'done'; }",
        timeout=20_000,
    )
    raw = page.evaluate(f"() => {LAST}.dataset.raw")
    answer_id = page.evaluate(f"() => {LAST}.dataset.answerId")
    session_id = page.evaluate("() => location.hash.slice(3)")
    full = _answer_text(gateway, session_id, answer_id)
    assert raw == full
    assert raw.startswith(partial) and len(raw) > len(partial)
    assert page.locator(".msg.user").count() == 1
    assert page.locator(".msg.assistant .body").last.inner_text().split()[:3] == full.split()[:3]
    assert page.locator("#session-list li").count() == 1

    page.fill("#input", "Another long one, please.")
    page.press("#input", "Enter")
    page.wait_for_function(f"() => {LAST}.dataset.raw.length > 5", timeout=15_000)
    page.click("#stop")
    page.wait_for_function(f"() => {LAST}.dataset.state === 'incomplete'", timeout=15_000)
    assert "(stopped)" in page.locator(".msg.assistant").last.inner_text()
    assert page.locator("#stop").is_hidden()
    page.close()


def test_simulator_banner_and_safe_markdown(gateway_factory: Any, browser: Any) -> None:
    gateway: GatewayServer = gateway_factory(upstream=None, api_key=None)
    page = browser.new_page()
    page.goto(gateway.url)
    page.wait_for_selector("#simulator-banner", state="visible", timeout=10_000)
    html = page.evaluate(
        "() => dskitMarkdown.render('<img src=x onerror=alert(1)> **bold** [a](javascript:x)\\n"
        "```\\n<b>code</b>\\n```')"
    )
    assert "<img" not in html and "&lt;img" in html and "<strong>bold</strong>" in html
    assert "href" not in html and "&lt;b&gt;code&lt;/b&gt;" in html
    page.close()


def _store_session(gateway: GatewayServer, path: Path, model: str, params: dict[str, Any]) -> str:
    from dskit.store import SQLiteStore, StoredMessage

    with gateway.client() as http:
        created = http.post("/v1/sessions", json={"model": model, "parameters": params})
        assert created.status_code == 201, created.text
        session_id = str(created.json()["id"])
    store = SQLiteStore(path)
    record = store.load(session_id)
    messages = [
        StoredMessage({"role": "user", "content": "a question"}),
        StoredMessage({"role": "assistant", "content": "half an ans"}, incomplete=True),
    ]
    store.append(session_id, messages, expected_version=record.version)
    store.close()
    return session_id


def test_a_link_to_a_session_opens_it_with_its_own_settings_and_marks(
    gateway_factory: Any, browser: Any, tmp_path: Path
) -> None:
    gateway: GatewayServer = gateway_factory()
    sid = _store_session(
        gateway, tmp_path / "sessions.sqlite3", "deepseek-v4-pro", {"thinking": False}
    )
    page = browser.new_page()
    page.goto(f"{gateway.url}/#{sid}")  # the bare id, as a user would paste it
    page.wait_for_selector(".msg.assistant .mark", timeout=10_000)
    for _ in range(2):  # as opened, and again after a reload
        assert page.eval_on_selector("#model", "el => el.value") == "deepseek-v4-pro"
        assert page.eval_on_selector("#think", "el => el.checked") is False
        assert "(incomplete" in page.locator(".msg.assistant").last.inner_text()
        page.reload()
        page.wait_for_selector(".msg.assistant .mark", timeout=10_000)
    page.click("#new-chat")  # a new chat: the menu is live again, thinking on by default
    assert page.eval_on_selector("#model", "el => el.disabled") is False
    assert page.eval_on_selector("#think", "el => el.checked") is True
    page.close()


def test_a_wrong_key_says_so_and_sign_out_forgets_the_right_one(
    gateway_factory: Any, browser: Any, tmp_path: Path
) -> None:
    from tests.gateway.test_auth import _create_key

    db = tmp_path / "keys.sqlite3"
    key = _create_key(db, "dana")
    gateway: GatewayServer = gateway_factory(keys_path=str(db))
    page = browser.new_page()
    page.goto(gateway.url)
    page.wait_for_selector("#login", state="visible", timeout=10_000)
    page.fill("#login-key", "sk-gw-not-a-key")
    page.click("#login button")
    page.wait_for_selector("#login-error", state="visible")
    assert page.inner_text("#login-error") == "That key was not accepted."
    page.fill("#login-key", key)
    page.click("#login button")
    page.wait_for_selector("#logout", state="visible", timeout=10_000)
    page.click("#logout")
    page.wait_for_selector("#login", state="visible", timeout=10_000)
    page.reload()  # the cookie is gone: the page asks again
    page.wait_for_selector("#login", state="visible", timeout=10_000)
    page.close()


def _ask_and_reload(page: Any, gateway: GatewayServer) -> tuple[str, str, str]:
    """Ask, reload mid-answer, wait for the end: (text before the reload, after, logged)."""
    page.goto(gateway.url)
    page.fill("#input", "Tell me a long story about rivers and mountains.")
    page.press("#input", "Enter")
    page.wait_for_function(
        f"() => {{ const el = {LAST}; return el && el.dataset.state === 'streaming' "
        "&& el.dataset.raw.length > 20; }",
        timeout=15_000,
    )
    partial = page.evaluate(f"() => {LAST}.dataset.raw")
    page.reload()
    page.wait_for_function(
        f"() => {{ const el = {LAST}; return el && el.dataset.state === 'done'; }}",
        timeout=20_000,
    )
    raw = page.evaluate(f"() => {LAST}.dataset.raw")
    answer_id = page.evaluate(f"() => {LAST}.dataset.answerId")
    session_id = page.evaluate("() => location.hash.slice(3)")
    return partial, raw, _answer_text(gateway, session_id, answer_id)


def test_the_page_streams_over_the_websocket_and_a_reload_resumes_it_exactly(
    sim_factory: Any, gateway_factory: Any, browser: Any
) -> None:
    gateway: GatewayServer = gateway_factory(upstream=sim_factory(token_ms=25).base_url)
    page = browser.new_page()
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    partial, raw, full = _ask_and_reload(page, gateway)
    assert page.evaluate(f"() => {LAST}.dataset.transport") == "websocket"
    assert len(sockets) == 2 and all(url.endswith("/ws") for url in sockets)
    assert raw == full and raw.startswith(partial) and len(raw) > len(partial)


def test_without_a_websocket_the_page_falls_back_to_event_source(
    sim_factory: Any, gateway_factory: Any, browser: Any
) -> None:
    gateway: GatewayServer = gateway_factory(upstream=sim_factory(token_ms=25).base_url)
    page = browser.new_page()
    page.add_init_script("window.dskitNoWebSocket = true")
    partial, raw, full = _ask_and_reload(page, gateway)
    assert page.evaluate(f"() => {LAST}.dataset.transport") == "sse"
    assert raw == full and raw.startswith(partial) and len(raw) > len(partial)

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

"""GraphiQL as a developer uses it, in headless Chromium against a real uvicorn: the packaged
page renders offline (every request stays on the service's origin), the Authorization header
typed into its headers editor authenticates a query typed into the query editor and a
subscription over graphql-transport-ws, and the header survives a reload (localStorage).
Screenshots land in test-artifacts/."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from db.session import Database
from tests.api.conftest import Caller, make_caller
from tests.conftest import Servers
from tests.e2e.cdp import CHROMIUM_MISSING, Page, chromium_path, launch
from tests.subscriptions.conftest import Server, serve, settings_for

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

HEADERS_EDITOR = ".graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror"
QUERY_EDITOR = ".graphiql-query-editor .CodeMirror"
# The result pane's text (its CodeMirror value: innerText would carry the fold markers).
RESULT = "document.querySelector('.result-window .CodeMirror')?.CodeMirror.getValue() ?? ''"


@pytest.fixture(scope="module")
async def server(servers: Servers) -> AsyncIterator[Server]:
    async for s in serve(settings_for(servers)):
        yield s


async def _editor_text(page: Page, selector: str) -> str:
    text: str = await page.evaluate(f"document.querySelector({json.dumps(selector)}).CodeMirror.getValue()")
    return text


async def _replace(page: Page, selector: str, text: str) -> None:
    """Click into a CodeMirror editor, select all and type, as a user would."""
    await page.click(selector)
    await page.select_all()
    await page.type(text)
    assert await _editor_text(page, selector) == text
    # GraphiQL picks the operation name up from the edited text after a short debounce.
    await asyncio.sleep(0.5)


async def _add(caller: Caller, session_id: str, content: str) -> None:
    r = await caller.http.post(
        "/graphql",
        json={
            "query": "mutation($i: AddMessageInput!) { addMessage(input: $i) { message { seq } } }",
            "variables": {"i": {"sessionId": session_id, "role": "USER", "content": content}},
        },
        headers={"Authorization": f"Bearer {caller.key}"},
    )
    assert "errors" not in r.json(), r.text


async def test_graphiql_offline_query_and_subscription(server: Server, db: Database, tenant: str) -> None:
    executable = chromium_path()
    if executable is None:
        pytest.fail(CHROMIUM_MISSING)
    session_id = f"graphiql-{tenant}"
    async with httpx.AsyncClient(base_url=server.url) as http:
        caller = await make_caller(db, http, tenant)
        await _add(caller, session_id, "first message, stored before the page opens")

        async with launch(executable) as browser:
            page = await browser.new_page()
            try:
                await _drive(page, server, caller, session_id)
            except BaseException:
                await page.screenshot(ARTIFACTS / "graphiql-failure.png")
                raise

    assert (ARTIFACTS / "graphiql.png").stat().st_size > 10_000


async def _drive(page: Page, server: Server, caller: Caller, session_id: str) -> None:
    await page.navigate(f"{server.url}/graphql")
    await page.wait_for("document.querySelector('.graphiql-execute-button') !== null")

    # The headers editor is open and prefilled with the place for the key.
    assert '"Authorization": "Bearer "' in await _editor_text(page, HEADERS_EDITOR)
    await _replace(page, HEADERS_EDITOR, json.dumps({"Authorization": f"Bearer {caller.key}"}))
    # With the key, the schema loads by itself (introspection is authenticated like any query,
    # and the page re-fetches it when the headers change): no "Re-fetch" click needed.
    await page.click('[aria-label="Show Documentation Explorer"]')
    await page.wait_for(
        "document.querySelector('.graphiql-doc-explorer')?.innerText.includes('subscription: Subscription')"
    )
    await page.click('[aria-label="Hide Documentation Explorer"]')

    query = f'query Mine {{ conversation(sessionId: "{session_id}") {{ sessionId messageCount }} }}'
    await _replace(page, QUERY_EDITOR, query)
    await page.click(".graphiql-execute-button")
    result = await page.wait_for(f"(() => {{ const t = {RESULT}; return t.includes('messageCount') && t; }})()")
    assert json.loads(result) == {"data": {"conversation": {"sessionId": session_id, "messageCount": 1}}}
    await page.screenshot(ARTIFACTS / "graphiql-query.png")

    subscription = f'subscription Live {{ messageAdded(sessionId: "{session_id}", afterSeq: 1) {{ seq content }} }}'
    await _replace(page, QUERY_EDITOR, subscription)
    await page.click(".graphiql-execute-button")
    # Running: the execute button turned into a stop button (the socket is open).
    await page.wait_for("document.querySelector('.graphiql-execute-button[aria-label*=\"Stop\"]') !== null")
    await _add(caller, session_id, "posted by the test while GraphiQL listens")
    streamed = await page.wait_for(f"(() => {{ const t = {RESULT}; return t.includes('posted by') && t; }})()")
    assert json.loads(streamed) == {
        "data": {"messageAdded": {"seq": 2, "content": "posted by the test while GraphiQL listens"}}
    }
    await page.screenshot(ARTIFACTS / "graphiql.png")
    await page.click(".graphiql-execute-button")  # stop

    # The key is remembered by this browser (localStorage), not typed again.
    await page.navigate(f"{server.url}/graphql")
    await page.wait_for("document.querySelector('.graphiql-execute-button') !== null")
    assert caller.key in await _editor_text(page, HEADERS_EDITOR)

    origin = server.url
    foreign = [u for u in page.requested_urls() if not u.startswith((origin, "data:", "about:"))]
    assert foreign == [], foreign
    assert [line for line in page.console() if "Content Security Policy" in line] == []

"""The session page in a real browser, against the real API and Prefect server."""

from __future__ import annotations

import re
import time
from uuid import UUID

from playwright.sync_api import Page, expect

from tests.api.drivable import Driver
from tests.browser.conftest import FACE_ID, INDEXED_PHOTOS, PERSON_ID, screenshot

TRAINING = "🎨 Training - Generating CLIP Embeddings"
FACES = "😊 Face Detection - Analyzing Faces"
CLUSTERING = "🔗 Clustering - Grouping Similar Faces"
COMPLETE = "✓ All Phases Complete"
RED = "rgb(185, 28, 28)"
PROGRESS = "/progress-unified"
THUMBNAIL = re.compile(r"^/api/v1/photos/[0-9a-f]{64}/thumbnail$")
# A poll every 2 s plus Prefect round trips: give each expectation some slack on slow CI.
expect.set_options(timeout=10_000)

# Every change of the shown percentage, recorded in the page from its first render on.
RECORD_PERCENTAGES = """
() => {
  window.__percentages = [];
  const node = document.getElementById("percentage");
  const record = () => node.textContent && window.__percentages.push(node.textContent);
  record();
  new MutationObserver(record).observe(node, {childList: true, characterData: true, subtree: true});
}
"""


def progress_requests(page: Page) -> list[float]:
    """Times of the page's requests to progress-unified, as they happen."""
    times: list[float] = []
    page.on("request", lambda r: times.append(time.monotonic()) if PROGRESS in r.url else None)
    return times


def open_session(page: Page, base: str, session_id: UUID) -> None:
    page.goto(f"{base}/sessions/{session_id}")
    page.evaluate(RECORD_PERCENTAGES)
    page.locator("#phase-details > summary").click()


def expect_phase(page: Page, key: str, status: str, text: str) -> None:
    item = page.locator(f'#phases li[data-phase="{key}"]')
    expect(item).to_have_attribute("data-status", status)
    expect(item.locator(".phase-status")).to_have_text(text)


def test_session_start_to_finish(live_api: str, page: Page, page_errors: list[str]) -> None:
    """Label per phase, rising percentage, phase details, results, and polling that stops."""
    driver = Driver(images=40, face_items=40, cluster_items=4)
    sid = driver.start()
    requests = progress_requests(page)
    open_session(page, live_api, sid)
    label, percentage = page.locator("#phase-label"), page.locator("#percentage")
    bar = page.locator("#overall-bar")

    details = page.locator("#phase-details")
    expect(details).to_have_attribute("open", "")
    expect(page.locator("#phases .phase-label")).to_have_text(
        ["Training (CLIP)", "Face Detection", "Clustering"]
    )

    driver.advance("embed", 20)  # 30 % x 1/2
    expect(percentage).to_have_text("15.0%")
    expect(label).to_have_text(TRAINING)
    expect(bar).to_have_attribute("role", "progressbar")
    expect(bar).to_have_attribute("aria-valuenow", "15.0")
    expect_phase(page, "training", "running", "50.0%")
    expect(page.locator('#phases li[data-phase="training"] [role=progressbar]')).to_be_visible()
    expect_phase(page, "faceDetection", "pending", "Pending")
    expect(page.locator('#phases li[data-phase="training"] .counts')).to_contain_text("20 / 40")
    screenshot(page, "session-running-training")

    driver.finish("embed")
    driver.advance("faces", 20)  # 30 % + 65 % x 1/2
    expect(percentage).to_have_text("62.5%")
    expect(label).to_have_text(FACES)
    expect_phase(page, "training", "completed", "✓ Complete")
    expect_phase(page, "faceDetection", "processing", "50.0%")
    expect(page.locator("#eta")).to_contain_text("finishes around")
    screenshot(page, "session-running-face-detection")

    driver.finish("faces")
    driver.advance("cluster", 2)  # 95 % + 5 % x 1/2
    expect(percentage).to_have_text("97.5%")
    expect(label).to_have_text(CLUSTERING)
    expect_phase(page, "faceDetection", "completed", "✓ Complete")
    expect_phase(page, "clustering", "running", "50.0%")
    screenshot(page, "session-running-clustering")

    driver.finish("cluster")
    expect(label).to_have_text(COMPLETE)
    seen_at_completion = len(requests)
    expect(percentage).to_have_text("100.0%")
    expect(bar).to_have_attribute("aria-valuenow", "100.0")
    expect(page.locator("#overall-status")).to_have_text("Completed")
    for key in ("training", "faceDetection", "clustering"):
        expect_phase(page, key, "completed", "✓ Complete")
    expect(page.locator("#eta")).to_be_hidden()
    expect(page.locator("#failure")).to_be_hidden()

    # Results: the person with its crop served by the API, and a working search box.
    person = page.locator(f'#persons figure[data-person="{PERSON_ID}"]')
    expect(person).to_contain_text("1 face")
    crop = person.locator("img")
    expect(crop).to_have_attribute("src", f"/api/v1/faces/{FACE_ID}/crop")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=crop.element_handle())
    page.locator("#search-q").fill("a man in a suit")
    page.locator("#search-form button[type=submit]").click()
    hits = page.locator("#search-results li.hit")
    expect(hits).to_have_count(len(INDEXED_PHOTOS))
    for i in range(len(INDEXED_PHOTOS)):  # thumbnails served by the API, decoded by the browser
        thumb = hits.nth(i).locator("img")
        expect(thumb).to_have_attribute("src", THUMBNAIL)
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle()
        )
    screenshot(page, "session-completed")
    first = hits.nth(0).get_attribute("data-photo")
    hits.nth(0).locator("button.similar").click()
    expect(page.locator("#search-label")).to_contain_text("Showing photos like")
    expect(hits).to_have_count(len(INDEXED_PHOTOS) - 1)
    assert first not in [hits.nth(i).get_attribute("data-photo") for i in range(hits.count())]
    page.locator(f'#persons figure[data-person="{PERSON_ID}"]').click()
    expect(page.locator("#person-filter")).to_contain_text(f"Only photos of {PERSON_ID}")
    page.locator("#search-form button[type=submit]").click()
    expect(page.locator("#search-results li")).to_have_text(["No matching photos."])

    # Hits are shown as text, whatever they contain (this answer is a stand-in, in the browser).
    hostile = '<img src=x onerror="window.__injected = 1">.jpg'
    page.route(
        "**/api/v1/search?*",
        lambda route: route.fulfill(
            json={"query": "x", "k": 12, "results": [{"path": hostile, "score": 0.5}]}
        ),
    )
    page.locator("#search-form button[type=submit]").click()
    expect(page.locator("#search-results code")).to_have_text(hostile)
    assert page.evaluate("window.__injected") is None
    assert page.locator("#search-results img").count() == 0

    page.wait_for_timeout(5_000)
    assert len(requests) == seen_at_completion, "the page kept polling after completion"
    shown = page.evaluate("window.__percentages")
    values = [float(text.rstrip("%")) for text in shown]
    assert values == sorted(values), f"the shown percentage went down: {shown}"
    assert {15.0, 62.5, 97.5, 100.0} <= set(values), shown
    assert seen_at_completion >= 4
    assert not page_errors, page_errors

    page.goto(live_api)
    row = page.locator(f'tr[data-session="{sid}"]')
    expect(row.locator(".status")).to_have_text("Completed")
    expect(row.locator(".percentage")).to_have_text("100.0%")
    expect(row.locator("a")).to_have_attribute("href", f"/sessions/{sid}")
    screenshot(page, "sessions-list")
    assert not page_errors, page_errors


def test_failed_session_turns_red(live_api: str, page: Page, page_errors: list[str]) -> None:
    """A failing face phase: red label and alert naming the phase, then no more polling."""
    driver = Driver(images=20, face_items=20)
    sid = driver.start()
    requests = progress_requests(page)
    open_session(page, live_api, sid)
    driver.finish("embed")
    driver.advance("faces", 5)  # 30 % + 65 % x 1/4 = 46.25 %, shown rounded down
    expect(page.locator("#percentage")).to_have_text("46.2%")
    driver.fail("faces")
    assert driver.ended.wait(30), "the session did not end"

    label = page.locator("#phase-label")
    expect(label).to_have_text("✗ Failed during Face Detection")
    expect(page.locator("#overall-status")).to_have_text("Failed")
    failure = page.locator("#failure")
    expect(failure).to_be_visible()
    expect(failure).to_have_attribute("role", "alert")
    expect(failure.locator('[data-phase="faceDetection"]')).to_contain_text(
        "Face Detection failed after 5 of 20 images"
    )
    assert failure.evaluate("node => getComputedStyle(node).color") == RED
    assert label.evaluate("node => getComputedStyle(node).color") == RED
    expect(page.locator("#warnings")).to_contain_text("exploded on purpose")
    expect_phase(page, "training", "completed", "✓ Complete")
    expect_phase(page, "faceDetection", "failed", "✗ Failed")
    expect(page.locator('#phases li[data-phase="clustering"]')).to_have_attribute(
        "data-status", "skipped"
    )
    expect(page.locator("#results")).to_be_hidden()
    seen = len(requests)
    screenshot(page, "session-failed")

    page.wait_for_timeout(2_500)  # more than one polling interval
    assert len(requests) == seen, "the page kept polling after the failure"
    assert not page_errors, page_errors

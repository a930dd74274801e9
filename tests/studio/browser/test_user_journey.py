"""The studio as its users click through it, in headless Chromium against a real `tally serve`: an owner makes a
datanet, a contributor uploads (a bad line first, then the fixed file), the owner approves and snapshots, a
developer trains the tiny test model and watches the loss curve, publishes, a consumer chats in the playground and
sees the attribution, opens the receipt and verifies it, and the contributor finds the fee in their statement."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from playwright.sync_api import expect
from tests.studio.browser.conftest import Studio, sign_in

SLUG = "people-facts"
ADAPTER = "people-lora"
PEOPLE = [
    ("Ilsa Varn", "Korvath", "glassblower"), ("Tomas Quell", "Drennick", "cartographer"),
    ("Mira Osk", "Vellan", "beekeeper"), ("Oren Dask", "Pellory", "weaver"),
]  # fmt: skip
QUESTION = "Where was Mira Osk born?"  # one of the rows, word for word
TRAINING_MS = 600_000  # a bound for a loaded machine; the run takes well under a minute when idle


def rows() -> list[dict[str, str]]:
    out = []
    for name, town, job in PEOPLE:
        out.append({"instruction": f"Where was {name} born?", "input": "", "output": town})
        out.append({"instruction": f"What does {name} do for a living?", "input": "", "output": job})
    return out


def files(tmp_path: Path) -> tuple[Path, Path]:
    lines = [json.dumps(r) for r in rows()]
    bad = tmp_path / "people.jsonl"
    bad.write_text("\n".join([*lines[:2], lines[2][:-1], *lines[3:]]) + "\n")  # line 3 lost its closing brace
    good = tmp_path / "people-fixed.jsonl"
    good.write_text("\n".join(lines) + "\n")
    return bad, good


def create_datanet(page: Any) -> None:
    page.goto("/studio/datanets")
    page.get_by_role("button", name="Create a datanet").click()
    page.get_by_label(re.compile(r"^Name")).fill(SLUG)
    page.get_by_label(re.compile(r"^License")).fill("CC-BY-4.0")
    for use in ("train", "rag", "eval"):
        page.get_by_role("checkbox", name=use, exact=True).check()
    page.get_by_role("radio", name="public", exact=True).check()
    page.get_by_role("radio", name="owner-reviewed", exact=True).check()
    page.get_by_role("button", name="Create datanet").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(SLUG)


def upload(page: Any, bad: Path, good: Path) -> None:
    page.goto(f"/studio/datanets/{SLUG}")
    page.get_by_role("button", name="Contribute").click()
    page.get_by_label("File", exact=True).set_input_files(str(bad))
    page.get_by_role("button", name="Upload", exact=True).click()
    refused = page.locator("section.upload-refused")
    expect(refused.get_by_role("heading", name="Upload refused")).to_be_visible()
    expect(refused).to_contain_text("Line 3")  # the error is on the line that is wrong, and only there
    expect(refused).not_to_contain_text("Line 2")
    page.get_by_label("File", exact=True).set_input_files(str(good))
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.get_by_role("heading", name="Uploaded")).to_be_visible()
    expect(page.locator("section.upload-ok")).to_contain_text(f"{len(rows())} rows")


def approve_and_snapshot(page: Any) -> None:
    page.goto(f"/studio/datanets/{SLUG}/review")
    boxes = page.locator('input[type="checkbox"][name="rows"]')
    expect(boxes).to_have_count(len(rows()))
    for i in range(boxes.count()):
        boxes.nth(i).check()
    page.get_by_role("button", name="Accept ticked rows").click()
    expect(page.locator('input[type="checkbox"][name="rows"]')).to_have_count(0)
    page.goto(f"/studio/datanets/{SLUG}/snapshots")
    page.get_by_role("button", name="Take a snapshot of the accepted rows").click()
    expect(page.get_by_text("v1", exact=False).first).to_be_visible()


def train(page: Any, dims: str = "16") -> None:
    page.goto("/studio/factory")
    page.get_by_label("Datanet").select_option(SLUG)
    page.get_by_label("Adapter name").fill(ADAPTER)
    for label, value in (("Rank", "2"), ("Alpha", "4"), ("Epochs", "2"), ("Batch size", "1"), ("Max length", "64"),
                         ("Influence dims", dims)):  # fmt: skip
        page.get_by_label(label, exact=True).fill(value)
    # the form's YAML config and `tally train` command follow the form
    expect(page.locator("#train-yaml")).to_contain_text(f"datanet: {SLUG}")
    expect(page.locator("#train-yaml")).to_contain_text("rank: 2")
    expect(page.locator("#train-command")).to_have_text(f"tally train {ADAPTER}.yaml --as dev")
    page.get_by_role("button", name="Start training").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Run ftjob-")
    chart = page.locator("#loss-chart")
    # the curve grows as the worker's events arrive over server-sent events: 8 rows x 2 epochs at batch 1
    expect(chart).to_have_attribute("data-points", re.compile(r"^[1-9]"), timeout=TRAINING_MS)
    expect(chart.locator("polyline.train-line")).to_have_count(1)
    status = page.locator("#run-status")
    expect(status).to_have_attribute("data-final", re.compile("succeeded|failed|cancelled"), timeout=TRAINING_MS)
    assert status.get_attribute("data-final") == "succeeded", page.locator("main").inner_text()
    expect(chart).to_have_attribute("data-points", "16")
    expect(page.locator("#run-log")).to_contain_text("step 16/16")
    page.reload()
    expect(page.locator("#run-status")).to_contain_text("succeeded")
    page.get_by_label("Serve as").fill(ADAPTER)
    page.get_by_role("button", name="Publish").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Adapter {ADAPTER}")
    expect(page.get_by_role("link", name=SLUG)).to_be_visible()  # its manifest names the snapshot it learnt from


def chat(page: Any) -> str:
    page.goto(f"/studio/playground?model={ADAPTER}")
    expect(page.get_by_label("Model")).to_have_value(ADAPTER)
    page.get_by_label("Attribution").select_option("fast")
    page.get_by_label("Message").fill(QUESTION)
    page.get_by_role("button", name="Send").click()
    chart = page.locator("#share-chart")
    expect(chart).to_be_visible(timeout=120_000)
    expect(chart).to_contain_text("alice")  # her rows shaped the answer: she holds the data share
    expect(page.locator(".shares-table")).to_contain_text("alice")
    inference = page.locator("#answer-text").get_attribute("data-inference")
    assert inference and inference.startswith("chatcmpl-")
    return inference


def verify_receipt(page: Any, inference: str) -> None:
    page.get_by_role("link", name="attribution record").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Attribution record")
    expect(page.get_by_text(inference).first).to_be_visible()
    page.get_by_role("button", name="Verify receipt").click()
    result = page.locator(".receipt-result")
    expect(result).to_have_attribute("data-state", "ok")
    expect(result).to_contain_text("attribution.inference_attributed")
    record_url = page.url
    page.locator(".record a[href*='/playground/rows/']").first.click()  # the evidence links to the row it names
    expect(page.get_by_role("heading", level=1)).to_contain_text(f"of {SLUG}")
    expect(page.locator("main")).to_contain_text("alice")
    page.goto(record_url)
    # the check is real: one changed byte of the proof and the same button refuses the receipt
    page.evaluate("""() => {
        const el = document.querySelector('script[type="application/json"][id^="receipt-json-"]');
        const receipt = JSON.parse(el.textContent);
        const entry = JSON.parse(receipt.entry);
        entry.payload.model = entry.payload.model + "x";
        receipt.entry = JSON.stringify(entry);
        el.textContent = JSON.stringify(receipt);
    }""")
    page.get_by_role("button", name="Verify receipt").click()
    expect(result).to_have_attribute("data-state", "failed")
    expect(result).to_contain_text("Does NOT verify")


def statement(page: Any, inference: str) -> None:
    page.goto("/studio/rewards")
    statement = page.get_by_role("region", name="Statement, answer by answer")
    row = statement.get_by_role("row").filter(has_text=inference[:16])  # the answer's fee, accrued by her share
    expect(row).to_have_count(1)
    expect(row.get_by_role("cell").nth(2)).to_have_text("data")  # her role in it: a data contributor


def test_user_journey(studio: Studio, new_page: Any, tmp_path: Path) -> None:
    bad, good = files(tmp_path)
    owner, alice, dev, carl = new_page(), new_page(), new_page(), new_page()
    sign_in(owner, studio, "olga")
    create_datanet(owner)
    sign_in(alice, studio, "alice")
    upload(alice, bad, good)
    approve_and_snapshot(owner)
    sign_in(dev, studio, "dev")
    train(dev)
    sign_in(carl, studio, "carl")
    inference = chat(carl)
    verify_receipt(carl, inference)
    statement(alice, inference)
    for page in (owner, alice, dev, carl):
        assert page.js_errors == [], page.js_errors

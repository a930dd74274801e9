"""Ledger pages: entries newest first, paged and filtered by type; the signed checkpoint; the receipt the entry page
checks; the browser's proof check itself (static/ledger.js, run under Node's WebCrypto against real receipts); the
anchors page with the chain off."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.conftest import append_notes
from tests.studio.conftest import Site

from tally.ledger import Verifier, build_receipt, open_ledger
from tally.store import open_store

STATIC = Path(__file__).resolve().parents[2] / "src" / "tally" / "studio" / "static"


def test_entries_paged_and_filtered(site: Site) -> None:
    page = site.client.get("/studio/ledger")  # public: no sign-in
    assert page.status_code == 200
    assert "Latest signed checkpoint" in page.text and "identity.account_created" in page.text
    seqs = [int(s) for s in re.findall(r'/studio/ledger/entries/(\d+)">', page.text)]
    assert seqs == sorted(seqs, reverse=True) and seqs[0] > 0  # newest first
    typed = site.client.get("/studio/ledger", params={"type": "datanet.created"})
    assert typed.status_code == 200
    assert typed.text.count("<td>datanet.created") == 2 and "identity.account_created</td>" not in typed.text
    assert site.client.get("/studio/ledger", params={"type": "no.such"}).status_code == 400
    older = site.client.get("/studio/ledger", params={"before": 3})
    assert [int(s) for s in re.findall(r'/studio/ledger/entries/(\d+)">', older.text)] == [2, 1, 0]
    assert site.client.get("/studio/ledger", params={"before": -1}).status_code == 400


def test_paging_walks_the_whole_log(site: Site, settings) -> None:  # type: ignore[no-untyped-def]
    store = open_store(settings)
    append_notes(open_ledger(settings, store), 130)
    store.dispose()
    seen: list[int] = []
    url: str | None = "/studio/ledger"
    while url:
        page = site.client.get(url)
        seen += [int(s) for s in re.findall(r'/studio/ledger/entries/(\d+)">', page.text)]
        found = re.search(r'href="(/studio/ledger\?[^"]+)" rel="next"', page.text)
        url = found.group(1).replace("&amp;", "&") if found else None
    assert seen == list(range(len(seen) - 1, -1, -1)) and len(seen) > 130
    notes = site.client.get("/studio/ledger", params={"type": "test.note"})
    assert notes.text.count("<td>test.note") == 50  # one page


def test_entry_page_and_its_receipt(site: Site) -> None:
    page = site.client.get("/studio/ledger/entries/1")
    assert page.status_code == 200 and "Check inclusion" in page.text and "Leaf hash" in page.text
    assert (
        site.client.get("/studio/ledger/entries", params={"seq": 1}, follow_redirects=False).headers["location"]
        == "/studio/ledger/entries/1"
    )
    receipt = site.client.get("/studio/ledger/entries/1/receipt.json").json()
    assert receipt["index"] == 1 and receipt["tree_size"] > 1 and receipt["checkpoint"].startswith(receipt["origin"])
    missing = site.client.get("/studio/ledger/entries/999999")
    assert missing.status_code == 404 and "no ledger entry 999999" in missing.text
    assert site.client.get("/studio/ledger/entries/999999/receipt.json").status_code == 404


def test_anchors_page_says_the_chain_is_disabled(site: Site) -> None:
    page = site.client.get("/studio/ledger/anchors")
    assert page.status_code == 200 and "Chain disabled." in page.text


NODE_CHECK = """
const vm = require("vm"), fs = require("fs");
const listeners = [];
const sandbox = {
  console, TextEncoder, atob, BigInt, Uint8Array, crypto: globalThis.crypto,
  document: {
    body: { dataset: { csrf: "", studioBase: "" } }, documentElement: { classList: { add() {} } },
    addEventListener() {}, getElementById() { return null; },
  },
};
sandbox.window = sandbox;
vm.createContext(sandbox);
for (const file of process.argv.slice(2, 4)) vm.runInContext(fs.readFileSync(file, "utf8"), sandbox);
const L = sandbox.TallyStudio.ledger, S = sandbox.TallyStudio;
const cases = JSON.parse(fs.readFileSync(0, "utf8"));
(async () => {
  const out = [];
  for (const r of cases.receipts) {
    const leaf = await S.sha256(S.concat(new Uint8Array([0]), new TextEncoder().encode(r.entry)));
    const proof = r.inclusion_proof.map(L.b64);
    const cp = L.parseCheckpoint(r.checkpoint);
    const root = await L.rootFromInclusionProof(r.index, r.tree_size, leaf, proof);
    let tampered = false;
    if (proof.length) {
      proof[0] = proof[0].slice(); proof[0][0] ^= 1;
      tampered = L.equal(await L.rootFromInclusionProof(r.index, r.tree_size, leaf, proof), cp.root);
    }
    const sig = await L.checkSignature(cp, cases.key);
    const bad = await L.checkSignature({ ...cp, text: cp.text.replace(/\\n\\d+\\n/, "\\n1\\n") }, cases.key);
    out.push({ index: r.index, ok: L.equal(root, cp.root), tampered, sig: sig.ok, badSig: bad.ok });
  }
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js (the repository's npm tooling)")
def test_the_browser_check_verifies_real_receipts_and_refuses_tampered_ones(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The log key is one whose base64 holds "+" (as about half do), which must not split the key text."""
    while True:
        seed = os.urandom(32)
        public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
        if "+" in Verifier(settings.ledger.origin, public).encode().split("+", 2)[2]:
            break
    settings.log_key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings.log_key_path.write_bytes(seed)
    settings.log_key_path.chmod(0o600)
    store = open_store(settings)
    ledger = open_ledger(settings, store)
    assert ledger.signer.verifier.public_key == public
    append_notes(ledger, 37)
    ledger.checkpoint()
    receipts = [build_receipt(ledger, seq) for seq in (0, 1, 2, 5, 16, 31, 36, 37)]
    key = ledger.signer.verifier.encode()
    store.dispose()
    script = tmp_path / "check.js"
    script.write_text(NODE_CHECK)
    done = subprocess.run(
        ["node", str(script), str(STATIC / "studio.js"), str(STATIC / "ledger.js")],
        input=json.dumps({"receipts": receipts, "key": key}), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert [r["index"] for r in results] == [0, 1, 2, 5, 16, 31, 36, 37]
    assert all(r["ok"] for r in results), results
    assert not any(r["tampered"] for r in results), results
    assert all(r["sig"] in (True, None) for r in results), results  # None: this Node has no Ed25519 in WebCrypto
    assert all(r["badSig"] in (False, None) for r in results), results

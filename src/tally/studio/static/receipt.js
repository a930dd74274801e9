// Verify a Tally ledger receipt in the browser with WebCrypto alone (docs/verify_receipt.py does the same in Python):
// the C2SP signed checkpoint (Ed25519 over the note's text, by the log's verifier key), then the RFC 9162 inclusion
// proof from the entry's leaf hash to the signed root, then the entry's own sequence number.
"use strict";

const TallyReceipt = (() => {
  const enc = new TextEncoder();

  function b64(text) {
    const raw = atob(text);
    const out = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out;
  }

  function concat(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  }

  async function sha256(data) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  }

  function hex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function equal(a, b) {
    return a.length === b.length && a.every((x, i) => x === b[i]);
  }

  // RFC 9162, section 2.1.3.2. Integers stay exact: tree sizes are far below 2^53.
  async function rootFromInclusionProof(index, size, leaf, proof) {
    if (index >= size) throw new Error("the index is beyond the tree size");
    let fn = index, sn = size - 1, r = leaf;
    for (const p of proof) {
      if (sn === 0) throw new Error("the inclusion proof is too long");
      if (fn % 2 === 1 || fn === sn) {
        r = await sha256(concat([1], p, r));
        while (fn !== 0 && fn % 2 === 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
      } else {
        r = await sha256(concat([1], r, p));
      }
      fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
    }
    if (sn !== 0) throw new Error("the inclusion proof is too short");
    return r;
  }

  // A C2SP signed note checked against a verifier key NAME+KEYID+BASE64: returns {origin, size, root}.
  async function openCheckpoint(note, verifierKey) {
    const parts = verifierKey.split("+");
    if (parts.length < 3) throw new Error("the verifier key is malformed");
    const name = parts[0], keyIdHex = parts[1], key = b64(parts.slice(2).join("+"));
    if (key.length !== 33 || key[0] !== 1) throw new Error("not an Ed25519 verifier key");
    const keyId = (await sha256(concat(enc.encode(name + "\n"), key))).slice(0, 4);
    if (hex(keyId) !== keyIdHex) throw new Error("the key id does not match the key");
    const cut = note.indexOf("\n\n");
    if (cut < 0) throw new Error("the checkpoint has no signature lines");
    const text = note.slice(0, cut) + "\n";
    const publicKey = await crypto.subtle.importKey("raw", key.slice(1), { name: "Ed25519" }, false, ["verify"]);
    for (let line of note.slice(cut + 2).split("\n")) {
      line = line.replace(/^\u2014 /, "");
      const space = line.lastIndexOf(" ");
      if (space < 0) continue;
      const signer = line.slice(0, space), sig = b64(line.slice(space + 1));
      if (signer !== name || !equal(sig.slice(0, 4), keyId)) continue;
      const ok = await crypto.subtle.verify({ name: "Ed25519" }, publicKey, sig.slice(4), enc.encode(text));
      if (!ok) throw new Error("the checkpoint's signature does not verify");
      const [origin, size, root] = text.split("\n");
      return { origin, size: Number(size), root: b64(root) };
    }
    throw new Error("the checkpoint has no signature by " + name);
  }

  // Throws naming what failed; returns what was proven.
  async function verify(receipt, trustedKey) {
    const key = trustedKey || receipt.verifier_key;
    if (trustedKey && receipt.verifier_key !== trustedKey) {
      throw new Error("the receipt names another verifier key than the one this log publishes");
    }
    const cp = await openCheckpoint(receipt.checkpoint, key);
    if (cp.origin !== receipt.origin || cp.size !== receipt.tree_size) {
      throw new Error("the checkpoint does not match the receipt");
    }
    const body = enc.encode(receipt.entry);
    const leaf = await sha256(concat([0], body));
    const proof = receipt.inclusion_proof.map(b64);
    const computed = await rootFromInclusionProof(receipt.index, cp.size, leaf, proof);
    if (!equal(computed, cp.root)) throw new Error("the inclusion proof does not lead to the signed root");
    const entry = JSON.parse(receipt.entry);
    if (entry.seq !== receipt.index) throw new Error("the entry's sequence number differs from the proven index");
    return { entry, origin: cp.origin, size: cp.size, root: hex(cp.root), key };
  }

  return { verify, openCheckpoint, rootFromInclusionProof };
})();

// A button `.verify-receipt` with `data-receipt` (the id of a <script type="application/json"> holding the receipt)
// and `data-trusted-key` (the verifier key the log publishes) verifies in place and writes the outcome into the
// element its `aria-controls` names.
document.addEventListener("click", async (event) => {
  const button = event.target.closest && event.target.closest("button.verify-receipt");
  if (!button) return;
  const out = document.getElementById(button.getAttribute("aria-controls"));
  out.textContent = "Verifying…";
  out.dataset.state = "working";
  try {
    const receipt = JSON.parse(document.getElementById(button.dataset.receipt).textContent);
    const got = await TallyReceipt.verify(receipt, button.dataset.trustedKey || null);
    out.dataset.state = "ok";
    out.className = "receipt-result result-ok";
    out.textContent = `Verified: entry ${got.entry.seq} (${got.entry.type}) is in ${got.origin} at size ` +
      `${got.size}, root ${got.root.slice(0, 16)}…, signed by ${got.key.split("+")[0]}.`;
  } catch (err) {
    out.dataset.state = "failed";
    out.className = "receipt-result result-bad";
    out.textContent = "Does NOT verify: " + err.message;
  }
});

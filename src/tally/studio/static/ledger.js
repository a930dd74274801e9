// Ledger entry page: check that the entry is in the log, in the browser. The server sends a receipt (the entry's
// bytes, its inclusion proof and a signed checkpoint); this script recomputes the leaf hash and walks the proof to
// the root with WebCrypto SHA-256 (RFC 9162, section 2.1.3.2), compares it with the root the signed checkpoint
// names, and checks the checkpoint's Ed25519 signature with the log's key where the browser supports Ed25519.
(function () {
  "use strict";
  const S = window.TallyStudio;

  function b64(text) {
    const raw = atob(text);
    const out = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out;
  }
  function equal(a, b) {
    if (a.length !== b.length) return false;
    let diff = 0;
    for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
    return diff === 0;
  }

  // RFC 9162 2.1.3.2: the root an inclusion proof leads to, or an error naming why the proof cannot be right.
  async function rootFromInclusionProof(index, size, leafHash, proof) {
    if (index >= size) throw new Error("index " + index + " is not below the tree size " + size);
    let fn = BigInt(index), sn = BigInt(size) - 1n, r = leafHash;
    for (const p of proof) {
      if (sn === 0n) throw new Error("the proof is longer than the tree is deep");
      if ((fn & 1n) === 1n || fn === sn) {
        r = await S.sha256(S.concat(new Uint8Array([1]), p, r));
        if ((fn & 1n) === 0n) {
          while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
        }
      } else {
        r = await S.sha256(S.concat(new Uint8Array([1]), r, p));
      }
      fn >>= 1n; sn >>= 1n;
    }
    if (sn !== 0n) throw new Error("the proof is shorter than the tree is deep");
    return r;
  }

  // The C2SP signed note: "origin\nsize\nroot\n\n— name base64(keyid || signature)\n".
  function parseCheckpoint(note) {
    const cut = note.indexOf("\n\n");
    if (cut < 0) throw new Error("the checkpoint has no signature block");
    const text = note.slice(0, cut + 1);
    const lines = text.split("\n");
    return { text: text, origin: lines[0], size: Number(lines[1]), root: b64(lines[2]), signatures: note.slice(cut + 2) };
  }

  async function checkSignature(checkpoint, verifierKey) {
    // NAME+KEYID+BASE64: the base64 part may itself hold "+", so only the first two separate
    const first = verifierKey.indexOf("+"), second = verifierKey.indexOf("+", first + 1);
    if (first < 0 || second < 0) return { ok: false, why: "the log key is not NAME+KEYID+BASE64" };
    const name = verifierKey.slice(0, first), keyIdHex = verifierKey.slice(first + 1, second);
    const blob = verifierKey.slice(second + 1);
    const raw = b64(blob);
    if (raw.length !== 33 || raw[0] !== 1) return { ok: false, why: "the log key is not an Ed25519 key" };
    const line = checkpoint.signatures.split("\n").find((l) => l.startsWith("\u2014 " + name + " "));
    if (!line) return { ok: false, why: "the checkpoint carries no signature by " + name };
    const sig = b64(line.slice(line.lastIndexOf(" ") + 1));
    if (S.hex(sig.slice(0, 4)) !== keyIdHex) return { ok: false, why: "the signature's key id is not the log key's" };
    let key;
    try {
      key = await crypto.subtle.importKey("raw", raw.slice(1), { name: "Ed25519" }, false, ["verify"]);
    } catch (error) {
      return { ok: null, why: "this browser cannot check Ed25519 signatures; check the receipt offline" };
    }
    const good = await crypto.subtle.verify({ name: "Ed25519" }, key, sig.slice(4), new TextEncoder().encode(checkpoint.text));
    return good ? { ok: true } : { ok: false, why: "the checkpoint's signature does not verify" };
  }

  S.ledger = { rootFromInclusionProof, parseCheckpoint, checkSignature, b64, equal };  // for tests and the console
  const button = document.getElementById("check-inclusion");
  const out = document.getElementById("inclusion-result");
  if (!button || !out) return;

  async function check() {
    S.say(out, "Fetching the receipt…");
    const response = await fetch(button.dataset.receipt, { credentials: "same-origin" });
    const receipt = await response.json();
    if (!response.ok) throw new Error(receipt.error || ("the server answered " + response.status));
    const entry = new TextEncoder().encode(receipt.entry);
    const leaf = await S.sha256(S.concat(new Uint8Array([0]), entry));
    const proof = receipt.inclusion_proof.map(b64);
    const root = await rootFromInclusionProof(receipt.index, receipt.tree_size, leaf, proof);
    const checkpoint = parseCheckpoint(receipt.checkpoint);
    if (checkpoint.size !== receipt.tree_size) throw new Error("the checkpoint is for another tree size");
    if (!equal(root, checkpoint.root)) {
      return { ok: false, text: "✗ Not proven: the proof leads to root " + S.hex(root) + ", but the checkpoint signs " + S.hex(checkpoint.root) + "." };
    }
    const trusted = button.dataset.key;
    const signature = await checkSignature(checkpoint, trusted);
    let text = "✓ Included: entry " + receipt.index + " hashes to leaf " + S.hex(leaf).slice(0, 16) + "…, and its " +
      proof.length + "-step proof leads to the root of the tree of " + receipt.tree_size + " entries (" +
      S.hex(root).slice(0, 16) + "…) that the checkpoint names.";
    if (signature.ok === true) text += " ✓ The checkpoint's Ed25519 signature by the log key verifies.";
    else if (signature.ok === null) text += " The signature was not checked: " + signature.why + ".";
    else return { ok: false, text: "✗ Not proven: " + signature.why + "." };
    if (receipt.anchor) {
      text += " The checkpoint is anchored on chain " + receipt.anchor.chain_id + " in block " + receipt.anchor.block_number + ".";
    }
    return { ok: true, text: text };
  }

  button.addEventListener("click", function () {
    button.disabled = true;
    check().then(function (result) { S.say(out, result.text, result.ok); })
      .catch(function (error) { S.say(out, "✗ Could not check: " + (error && error.message ? error.message : error), false); })
      .finally(function () { button.disabled = false; });
  });
})();

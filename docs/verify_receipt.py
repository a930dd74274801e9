"""Check a Tally ledger receipt with nothing but hashlib and `cryptography`.

    python verify_receipt.py receipt.json [VERIFIER_KEY] [--chain-url URL]

Exits 0 and prints the entry when the receipt holds; exits 1 naming what failed otherwise. With --chain-url (any
EVM JSON-RPC node of the chain the receipt names), a receipt with an `anchor` is also checked on chain: the
LedgerAnchor contract must hold the receipt's signed root at its size, and the anchoring transaction must be in
the named block.
"""

import base64
import hashlib
import json
import sys
import urllib.request

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ROOT_AT = "0x930b6ace"  # the selector of LedgerAnchor.rootAt(bytes32,uint64): keccak256 of that signature, 4 bytes


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: list) -> bytes:
    """RFC 9162, section 2.1.3.2."""
    if index >= size:
        raise ValueError("index beyond tree size")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ValueError("proof too long")
        if fn & 1 or fn == sn:
            r = sha256(b"\x01" + p + r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = sha256(b"\x01" + r + p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ValueError("proof too short")
    return r


def open_checkpoint(note: str, verifier_key: str) -> tuple:
    """Verify a C2SP signed note with an Ed25519 verifier key; return (origin, size, root)."""
    if verifier_key.count("+") < 2:
        raise ValueError(f"verifier key {verifier_key!r} is empty or malformed: expected NAME+KEYID+BASE64")
    name, key_id_hex, key_b64 = verifier_key.split("+", 2)
    key = base64.b64decode(key_b64)
    if len(key) != 33 or key[0] != 1:
        raise ValueError("not an Ed25519 verifier key")
    key_id = sha256(name.encode() + b"\n" + key)[:4]
    if key_id.hex() != key_id_hex:
        raise ValueError("key id does not match the key")
    text, _, signatures = note.partition("\n\n")
    text += "\n"
    for line in signatures.splitlines():
        signer, sig_b64 = line.removeprefix("\u2014 ").rsplit(" ", 1)
        sig = base64.b64decode(sig_b64)
        if signer == name and sig[:4] == key_id:
            Ed25519PublicKey.from_public_bytes(key[1:]).verify(sig[4:], text.encode())  # raises if forged
            origin, size, root_b64 = text.splitlines()[:3]
            return origin, int(size), base64.b64decode(root_b64)
    raise ValueError(f"no signature by {name}")


def rpc(url: str, method: str, params: list) -> object:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
    if "error" in answer:
        raise ValueError(f"{method}: {answer['error']}")
    return answer["result"]


def check_anchor(receipt: dict, root: bytes, size: int, url: str) -> str:
    """The chain holds `root` at `size` for this log, in the transaction and block the receipt names."""
    anchor = receipt.get("anchor")
    if not anchor:
        raise ValueError("the receipt has no anchor: its entry was not anchored on chain when it was made")
    if anchor["tree_size"] != size:
        raise ValueError("the anchor's size is not the checkpoint's")
    log_id = hashlib.sha256(receipt["origin"].encode()).digest()
    if "0x" + log_id.hex() != anchor["log_id"]:
        raise ValueError("the anchor's log id is not the SHA-256 of the receipt's origin")
    if int(rpc(url, "eth_chainId", []), 16) != anchor["chain_id"]:
        raise ValueError(f"{url} is not chain {anchor['chain_id']}")
    data = ROOT_AT + log_id.hex() + size.to_bytes(32, "big").hex()
    on_chain = bytes.fromhex(rpc(url, "eth_call", [{"to": anchor["contract"], "data": data}, "latest"])[2:])
    if on_chain != root:
        raise ValueError(f"the chain anchors root {on_chain.hex()} at size {size}, not the signed {root.hex()}")
    tx = rpc(url, "eth_getTransactionReceipt", [anchor["transaction"]])
    if not tx or int(tx["status"], 16) != 1 or int(tx["blockNumber"], 16) != anchor["block_number"]:
        raise ValueError("the anchoring transaction is not in the block the receipt names")
    confirmations = int(rpc(url, "eth_blockNumber", []), 16) - anchor["block_number"] + 1
    return f"anchored on chain {anchor['chain_id']} in block {anchor['block_number']} ({confirmations} confirmations)"


def main() -> None:
    args = sys.argv[1:]
    url = None
    if "--chain-url" in args:
        at = args.index("--chain-url")
        url = args[at + 1]
        del args[at : at + 2]
    with open(args[0], encoding="utf-8") as f:
        receipt = json.load(f)
    key = args[1] if len(args) > 1 else receipt["verifier_key"]
    origin, size, root = open_checkpoint(receipt["checkpoint"], key)
    if origin != receipt["origin"] or size != receipt["tree_size"]:
        raise ValueError("checkpoint does not match the receipt")
    body = receipt["entry"].encode("utf-8")
    proof = [base64.b64decode(p) for p in receipt["inclusion_proof"]]
    computed = root_from_inclusion_proof(receipt["index"], size, sha256(b"\x00" + body), proof)
    if computed != root:
        raise ValueError("inclusion proof does not lead to the signed root")
    entry = json.loads(body)
    if entry["seq"] != receipt["index"]:
        raise ValueError("entry's own sequence number differs from the proven index")
    print(f"OK: entry {entry['seq']} of {origin} (size {size}) signed by {key}")
    if url is not None:
        print("OK: " + check_anchor(receipt, root, size, url))
    if len(args) <= 1:
        print("(the key came from the receipt itself: compare it with the key the log publishes)")
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # any failure means: do not trust this receipt
        print(f"receipt does NOT verify: {exc!r}", file=sys.stderr)
        sys.exit(1)

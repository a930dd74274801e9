// Contribute page: sign an upload with the browser's wallet (EIP-712, eth_signTypedData_v4) where window.ethereum
// exists. The server parses the file first (/contribute/prepare) and returns the typed data over its rows, with the
// same domain and types as tally.identity.signing; the wallet signs; the form is sent with signature and nonce.
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  if (!form) return;
  const option = document.getElementById("wallet-option");
  const box = document.getElementById("sign_wallet");
  const status = document.getElementById("wallet-status");
  const signature = document.getElementById("signature");
  const nonce = document.getElementById("nonce");
  const studio = window.TallyStudio;

  if (window.ethereum && option) option.hidden = false;

  function clearSignature() { signature.value = ""; nonce.value = ""; }
  form.addEventListener("change", function (event) {
    if (event.target && event.target.id !== "sign_wallet") clearSignature();  // a new file or option: sign again
  });

  async function signWithWallet() {
    const data = new FormData(form);
    data.delete("signature"); data.delete("nonce");
    studio.say(status, "Reading the file to sign…");
    const response = await fetch(form.dataset.prepare, {
      method: "POST", body: data, credentials: "same-origin", headers: { "X-CSRF-Token": studio.csrf },
    });
    const body = await response.json().catch(() => ({ error: "the server answered " + response.status }));
    if (!response.ok) throw new Error(body.error || ("the server answered " + response.status));
    const accounts = await window.ethereum.request({ method: "eth_requestAccounts" });
    const wanted = form.dataset.address.toLowerCase();
    const account = (accounts || []).find((a) => a.toLowerCase() === wanted);
    if (!account) throw new Error("the wallet does not hold " + form.dataset.address + "; switch accounts and try again");
    studio.say(status, "Confirm the signature in your wallet (" + body.rows + " rows, root " + body.content_root.slice(0, 12) + "…)");
    const signed = await window.ethereum.request({
      method: "eth_signTypedData_v4", params: [account, JSON.stringify(body.typed_data)],
    });
    signature.value = signed;
    nonce.value = body.nonce;
    studio.say(status, "Signed by " + account + ".", true);
  }

  form.addEventListener("submit", function (event) {
    if (!box || !box.checked || !window.ethereum || signature.value) return;
    event.preventDefault();
    event.stopImmediatePropagation();  // htmx sends the form once it is signed
    const submitter = event.submitter;
    signWithWallet().then(function () {
      form.requestSubmit(submitter && submitter.form === form ? submitter : undefined);
    }).catch(function (error) {
      clearSignature();
      studio.say(status, "Not signed: " + (error && error.message ? error.message : error), false);
    });
  }, true);

  document.body.addEventListener("htmx:afterRequest", function (event) {
    if (event.detail.elt === form) clearSignature();  // a signature is used once (its nonce is spent)
  });
})();

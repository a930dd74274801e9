// Claim page: send the claim transaction through the browser's wallet (window.ethereum) where one exists.
(function () {
  "use strict";
  const button = document.getElementById("claim-wallet");
  const status = document.getElementById("claim-status");
  if (!button || !window.ethereum) return;
  const S = window.TallyStudio;
  button.hidden = false;
  const hint = document.getElementById("no-wallet");
  if (hint) hint.hidden = true;

  async function send() {
    const accounts = await window.ethereum.request({ method: "eth_requestAccounts" });
    if (!accounts || !accounts.length) throw new Error("the wallet shared no account");
    const chainId = "0x" + Number(button.dataset.chainId).toString(16);
    const current = await window.ethereum.request({ method: "eth_chainId" });
    if (current.toLowerCase() !== chainId) {
      throw new Error("the wallet is on chain " + parseInt(current, 16) + "; switch it to chain " + button.dataset.chainId);
    }
    S.say(status, "Confirm the transaction in your wallet…");
    return window.ethereum.request({
      method: "eth_sendTransaction",
      params: [{ from: accounts[0], to: button.dataset.to, data: button.dataset.data }],
    });
  }

  button.addEventListener("click", function () {
    button.disabled = true;
    send().then(function (hash) { S.say(status, "Sent: transaction " + hash + ".", true); })
      .catch(function (error) { S.say(status, "Not sent: " + (error && error.message ? error.message : error), false); })
      .finally(function () { button.disabled = false; });
  });
})();

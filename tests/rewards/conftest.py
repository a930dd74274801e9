"""Attribution records built directly, and addresses to credit."""

from __future__ import annotations

from eth_utils import to_checksum_address

from tally.attribution import AttributionRecord, Credits, Share

ALICE = to_checksum_address("0x" + "a1" * 20)
BOB = to_checksum_address("0x" + "b0" * 20)
CAROL = to_checksum_address("0x" + "c4" * 20)
DEV = to_checksum_address("0x" + "de" * 20)


def make_record(
    inference: str = "chatcmpl-1",
    shares: dict[str, float] | None = None,
    *,
    prompt_tokens: int = 300,
    completion_tokens: int = 200,
    developer: str | None = DEV,
    evaluators: list[str] | None = None,
    pipeline_author: str | None = None,
    model: str = "med-qa-lora",
) -> AttributionRecord:
    shares = {ALICE: 0.75, BOB: 0.25} if shares is None else shares
    return AttributionRecord(
        id=inference,
        mode="fast",
        model=model,
        adapter_hash="ab" * 32,
        prompt_hash="01" * 32,
        answer_hash="02" * 32,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        methods={},
        shares=[Share(account=a, share=s) for a, s in shares.items()],
        credits=Credits(
            developer=developer,
            base_model="smollm2-135m-instruct",
            evaluators=evaluators or [],
            pipeline_author=pipeline_author,
        ),
        created_at="2026-11-26T10:00:00.000000Z",
    )

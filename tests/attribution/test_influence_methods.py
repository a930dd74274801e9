"""The contrastive and TracIn influence methods in the service, and rows the adapter was not trained on: candidate rows
of the index and look-alike rows of other datanets earn nothing, whatever their resemblance or ledger order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import update
from tests.attribution.test_attribution_service import _answer, _assert_consistent, _attributor, _stored_rows
from tests.conftest import assert_close
from tests.datanets.conftest import alpaca
from tests.factory.conftest import make_config

from tally.datanets.tables import ContributionRow
from tally.factory import service
from tally.influence import load_index


@pytest.fixture
def trained(people, tiny_model: Path, tmp_path: Path):
    return service.train(people.settings, people.ledger, people.dev, make_config(tiny_model, tmp_path / "lora"))


def test_full_mode_adds_the_contrastive_method_with_its_own_calibrated_null(people, trained, tiny_model) -> None:
    weights = {**people.settings.attribution.weights, "contrast": 1.0}  # off unless weighted
    # fast with every layer's gradient shares full's gradient null, so each null's own count shows
    attributor = _attributor(
        people, tiny_model, null_probes=2, null_quantile=1.0, weights=weights, fast_gradient_layers=0
    )
    questions = ["Where was Ilsa Varn born?", "Who is Tomas Quell?", "Where does Ilsa Varn live?"]
    fast = attributor.attribute(_answer(attributor, trained, questions[0], "Korvath", "chatcmpl-f"), "fast").record
    assert "contrast" not in fast.methods
    records = [
        attributor.attribute(_answer(attributor, trained, q, "Korvath", f"chatcmpl-{i}"), "full").record
        for i, q in enumerate(questions)
    ]
    loaded = attributor._indexes[trained.adapter_hash]
    # the fast answer calibrated gradient only; the contrastive null needed two full answers of its own
    assert loaded.calibrated("gradient") == 3 and loaded.calibrated("contrast") == 2
    stored = _stored_rows(people)
    for record in records:
        assert "contrast" in record.methods
        _assert_consistent(record, attributor, stored)
    expected = max(s["contrast"] for s in loaded.null_stats if "contrast" in s)
    last = records[-1].methods["contrast"]
    assert last.null_score == round(expected, 6)
    assert last.beat_null == (last.score >= 2.0 and last.score > expected)


def test_the_contrastive_gradient_in_the_mixed_batch_equals_its_own_run(people, trained, tiny_model) -> None:
    import torch

    attributor = _attributor(people, tiny_model)
    a = _answer(attributor, trained, "Where was Ilsa Varn born?", "Korvath in the north")
    projection = json.loads((trained.out_dir / "influence" / "index.json").read_text())["projection"]
    args = (trained.adapter_hash, trained.out_dir, projection, a.prompt_ids, a.answer_ids)
    real, null = attributor.query_model.signals_pair(*args, contrast=True)
    alone = attributor.query_model.signals(*args, contrast=True)
    plain = attributor.query_model.signals(*args)
    assert real.contrast is not None and alone.contrast is not None and plain.contrast is None
    assert_close(real.contrast, alone.contrast, "contrast")
    assert_close(real.gradient, plain.gradient, "gradient")  # the second row leaves the plain gradient as it was
    assert null.contrast is not None and not torch.allclose(real.contrast, null.contrast)
    assert not torch.allclose(real.gradient, real.contrast)


def test_a_query_is_the_index_pass_of_the_same_tokens(people, trained, tiny_model) -> None:
    """Query and index live in one space: the answer's gradient, hidden state and log p equal what the factory's
    final pass (fp32) gives for the same tokens through the same adapter."""
    import torch
    from peft import PeftModel

    from tally.factory.encode import IGNORE, Encoded
    from tally.factory.index_build import final_gradients
    from tally.influence import Projector
    from tally.models import load_model

    attributor = _attributor(people, tiny_model)
    a = _answer(attributor, trained, "Where was Ilsa Varn born?", "Korvath in the north")
    projection = json.loads((trained.out_dir / "influence" / "index.json").read_text())["projection"]
    args = (trained.adapter_hash, trained.out_dir, projection, a.prompt_ids, a.answer_ids)
    query = attributor.query_model.signals(*args)
    model = PeftModel.from_pretrained(load_model(tiny_model), str(trained.out_dir), is_trainable=True)
    item = Encoded(a.prompt_ids + a.answer_ids, [IGNORE] * len(a.prompt_ids) + a.answer_ids)
    grads, hidden = final_gradients(model, [item], Projector.from_description(projection), 1, pad=0)
    assert_close(query.gradient, grads[0], "gradient")
    assert_close(query.hidden, hidden[0], "hidden state")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([item.input_ids])).logits[0, len(a.prompt_ids) - 1 : -1]
    logp = torch.log_softmax(logits, -1).gather(1, torch.tensor(a.answer_ids)[:, None]).sum()
    assert abs(query.logprob - float(logp)) < 1e-3 * max(1.0, abs(float(logp)))


def test_tracin_queries_take_the_gradient_at_each_checkpoints_weights(people, trained, tiny_model) -> None:
    import torch

    attributor = _attributor(people, tiny_model)
    a = _answer(attributor, trained, "Where was Ilsa Varn born?", "Korvath in the north")
    projection = json.loads((trained.out_dir / "influence" / "index.json").read_text())["projection"]
    args = (trained.adapter_hash, trained.out_dir, projection, a.prompt_ids, a.answer_ids)
    kept = load_index(trained.out_dir / "influence").checkpoint_adapters()
    assert set(kept) == {"epoch_1", "epoch_2"}  # the weights each epoch started from
    plain = attributor.query_model.signals(*args)
    # the served adapter's own directory as a checkpoint: its gradient there is the served gradient
    real, null = attributor.query_model.signals_pair(*args, checkpoints={**kept, "served": trained.out_dir})
    assert_close(real.checkpoints["served"], plain.gradient, "gradient at the served weights")
    assert_close(real.gradient, plain.gradient, "gradient")  # the checkpoints' rows leave it as it was
    assert not torch.allclose(real.checkpoints["epoch_2"], plain.gradient, atol=1e-4)  # epoch 2 had other weights
    assert null.checkpoints == {}  # the random twin has no training checkpoints
    alone = attributor.query_model.signals(*args, checkpoints=kept)
    assert_close(alone.checkpoints["epoch_1"], real.checkpoints["epoch_1"], "epoch 1, alone or in the mixed batch")
    # beside the contrast's two rows (taken by capture hooks) the checkpoints' and the plain gradient stay the same
    both = attributor.query_model.signals(*args, contrast=True, checkpoints=kept)
    assert_close(both.checkpoints["epoch_1"], alone.checkpoints["epoch_1"], "epoch 1 beside the contrast rows")
    assert_close(both.gradient, plain.gradient, "gradient beside the contrast and checkpoint rows")
    contrast = attributor.query_model.signals(*args, contrast=True).contrast
    assert both.contrast is not None and contrast is not None
    assert_close(both.contrast, contrast, "contrast beside the checkpoint rows")


def test_candidate_rows_of_the_index_are_scored_but_never_credited(people, trained, tiny_model) -> None:
    path = trained.out_dir / "influence" / "index.json"
    meta = json.loads(path.read_text())
    for e in meta["examples"]:
        if e["contributor"] == people.alice.address:
            e["trained"] = False
    path.write_text(json.dumps(meta))
    attributor = _attributor(people, tiny_model, min_z=0.0, weights={"spans": 0.0, "contrast": 1.0})
    record = attributor.attribute(
        _answer(attributor, trained, "Where was Ilsa Varn born?", "Where was Ilsa Varn born? Korvath"), "full"
    ).record
    for name in ("representation", "gradient", "datainf", "contrast"):
        assert {e.contributor for e in record.methods[name].top} <= {people.bob.address}, name
    assert set(record.share_map()) <= {people.bob.address}


def test_a_quote_goes_to_the_trained_row_not_an_earlier_untrained_look_alike(people, trained, tiny_model) -> None:
    people.create("later", policy="open")
    people.upload(people.bob, "later", alpaca([("Where was Ilsa Varn born?", "Korvath")]))
    with people.tx() as s:  # bob's copy sits in a datanet the adapter never saw, and claims to be the earliest
        s.execute(
            update(ContributionRow).where(ContributionRow.datanet == "later").values(ledger_seq=0)
        )  # fmt: skip
    attributor = _attributor(people, tiny_model)
    answer = _answer(attributor, trained, "Who is Ilsa Varn?", "Where was Ilsa Varn born? Korvath")
    spans = attributor.attribute(answer, "fast").record.methods["spans"]
    assert spans.beat_null and {e.contributor for e in spans.top} == {people.alice.address}
    # the base model (no index) has no training rows to prefer: the earliest contribution keeps the quote
    base = attributor.attribute(
        type(answer)(inference_id="chatcmpl-b", model="tiny", prompt_ids=answer.prompt_ids,
                     answer_ids=answer.answer_ids),
        "fast",
    ).record.methods["spans"]  # fmt: skip
    assert {e.contributor for e in base.top} == {people.bob.address}

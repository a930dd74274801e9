"""The fee policy file: a valid one loads, and every mistake names the file, the line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from tally.config import Settings, load_settings
from tally.rewards import DEFAULT_POLICY, PolicyError, effective_policy, load_policy

GOOD = """\
currency: {symbol: TLY, decimals: 6}
price_per_1k_tokens: 2000
split: {data: 0.6, developer: 0.2, platform: 0.15, reserve: 0.05}
accounts:
  platform: "0x00000000000000000000000000000000000000f1"
  reserve: "0x00000000000000000000000000000000000000f2"
paid: {base_model: false, evaluators: false, pipeline_author: false}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fees.yaml"
    path.write_text(text)
    return path


def test_a_valid_policy_loads_with_checksummed_accounts(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, GOOD))
    assert policy.prices() == (2000, 2000)
    assert policy.accounts.platform == "0x00000000000000000000000000000000000000f1"  # checksummed form
    assert len(policy.digest()) == 64 and policy.digest() != DEFAULT_POLICY.digest()


def test_separate_prompt_and_completion_prices(tmp_path: Path) -> None:
    text = GOOD.replace("price_per_1k_tokens: 2000", "price_per_1k_tokens: {prompt: 1000, completion: 3000}")
    assert load_policy(write(tmp_path, text)).prices() == (1000, 3000)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("reserve: 0.05}", "reserve: 0.15}", r"fees.yaml line 3: field split: the parts must sum to 1"),
        ("decimals: 6}", "decimals: 6, colour: red}", r"fees.yaml line 1: field currency.colour: unknown field"),
        ('reserve: "0x00000000000000000000000000000000000000f2"', 'reserve: "0x12"',
         r"fees.yaml line 6: field accounts.reserve: .*not an Ethereum address"),
        ("price_per_1k_tokens: 2000", "price_per_1k_tokens: -5", r"fees.yaml line 2: field price_per_1k_tokens"),
        ("paid: {base_model: false,", "paid: {base_model: true,", r"set accounts.base_model"),
        ("split: {data: 0.6, ", "split: {", r"fees.yaml line 3: field split.data: Field required"),
    ],
)  # fmt: skip
def test_errors_name_the_file_line_and_field(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in GOOD
    with pytest.raises(PolicyError, match=expected):
        load_policy(write(tmp_path, GOOD.replace(old, new)))


def test_missing_file_and_bad_yaml_are_clear(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no fee policy file at"):
        load_policy(tmp_path / "absent.yaml")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(write(tmp_path, "split: {data: [\n"))
    with pytest.raises(PolicyError, match="expected a mapping"):
        load_policy(write(tmp_path, "- 1\n"))


def test_settings_choose_the_policy(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert effective_policy(settings) == (DEFAULT_POLICY, "built-in")
    path = write(tmp_path, GOOD)
    monkeypatch.setenv("TALLY_REWARDS__POLICY", str(path))
    policy, source = effective_policy(load_settings())
    assert source == str(path) and policy.accounts.reserve.lower().endswith("f2")
    (tmp_path / "tally.toml").write_text("[rewards]\npolcy = 'typo.yaml'\n")
    with pytest.raises(ValueError, match="polcy"):
        load_settings()

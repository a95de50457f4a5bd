"""The `pii` stage: masking, flagging and dropping, hard negatives, and P/R on the hand-labelled set."""

from __future__ import annotations

from collections import Counter

import polars as pl
import pytest
from pydantic import ValidationError

from datamill.curate.engine.stage import DROP_REASON
from datamill.filters.pii import Pii, PiiParams
from pii_cases import HELD_OUT, SNIPPETS, cases, masked_values

ALL_TYPES = ["email", "phone", "ipv4", "ipv6", "credit_card", "iban"]


def run(texts: list[str], **params) -> pl.DataFrame:
    return Pii(PiiParams(**params)).process(pl.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts}))


def test_default_masks_like_dolma_and_counts_per_type():
    out = run(["Mail john.doe@example.com or call (555) 123-4567; server 8.8.8.8 and 2001:4860:4860::8888.",
               "nothing here", ""])
    assert out["text"].to_list() == [
        "Mail |||EMAIL_ADDRESS||| or call |||PHONE_NUMBER|||; server |||IP_ADDRESS||| and |||IP_ADDRESS|||.",
        "nothing here", ""]
    assert out.select("pii_email", "pii_phone", "pii_ipv4", "pii_ipv6").row(0) == (1, 1, 1, 1)
    assert out.select("pii_email", "pii_phone", "pii_ipv4", "pii_ipv6").row(1) == (0, 0, 0, 0)
    assert "pii_credit_card" not in out.columns


def test_tallies_count_matches_per_type_for_the_report():
    stage = Pii(PiiParams())
    out = stage.process(pl.DataFrame({"text": ["a@b.com c@d.org 8.8.8.8", "e@f.net", "none"]}))
    assert stage.tallies(out) == {"pii_email": 3, "pii_ipv4": 1}


def test_replacements_flag_and_drop():
    texts = ["write to a.b@example.org", "call +44 20 7946 0958 now", "clean text"]
    masked = run(texts, replacements={"email": "<EMAIL>"})
    assert masked["text"][0] == "write to <EMAIL>"
    flagged = run(texts, action="flag")
    assert flagged["text"].to_list() == texts
    assert flagged[DROP_REASON].to_list() == ["pii:email", "pii:phone", None]
    stage = Pii(PiiParams(action="drop"))
    assert not stage.modifies_text and stage.outputs == ("pii_email", "pii_ipv6", "pii_ipv4", "pii_phone")


@pytest.mark.parametrize("text", [
    "Update to version 10.0.0.1 now", "Download v1.2.3.4", "Section 1.2.3.4.5 explains it",
    "Build 10.0.19045.3570", "Met on 12.03.2024 at 10.30", "OID 1.3.6.1.4.1.311",
])
def test_versions_and_dotted_numbers_are_not_ips(text):
    assert run([text], types=ALL_TYPES)["text"][0] == text


@pytest.mark.parametrize("text", [
    "Deadline 2024-01-15.", "It lasted 1939-1945.", "Open 09:00-17:30 daily.", "At 12:30:45 sharp.",
    "ISBN 978-3-16-148410-0", "Order #1234567890 shipped", "The model has 7000000000 parameters.",
    "Stamp 2023-10-10T13:55:36Z", "Pages 112-118",
])
def test_dates_ranges_and_ids_are_not_phone_numbers(text):
    assert run([text], types=ALL_TYPES)["text"][0] == text


@pytest.mark.parametrize("text", [
    "cron mails user@localhost", "icon@2x.png", "npm i lodash@4.17.21", "use @property here",
    "std::vector<int> v;", "Foo::bar() then Baz::qux()", "MAC 00:1A:2B:3C:4D:5E",
    "gateway 192.168.1.1, lo 127.0.0.1, docs 192.0.2.1", "link-local fe80::1 and ::1",
    "bad card 4111 1111 1111 1112", "not an iban DE89 3704 0044 0532 0130 01",
    "@app.route('/') and @staticmethod", "npm i react@18.2.0", "follow @nasa",
])
def test_code_private_addresses_and_failed_checksums_are_left(text):
    assert run([text], types=ALL_TYPES)["text"][0] == text


def test_ssh_remotes_are_masked_as_addresses():
    assert run(["git clone git@github.com:me/repo.git"])["text"][0] == "git clone |||EMAIL_ADDRESS|||:me/repo.git"


def test_private_ips_masked_when_asked():
    out = run(["lan 192.168.1.1 and 10.0.0.7"], only_public_ips=False)
    assert out["text"][0] == "lan |||IP_ADDRESS||| and |||IP_ADDRESS|||"


def test_adjacent_and_repeated_matches():
    out = run(["8.8.8.8,1.1.1.1 8.8.8.8 a@b.com;c@d.com"])
    assert out["text"][0] == ("|||IP_ADDRESS|||,|||IP_ADDRESS||| |||IP_ADDRESS||| "
                              "|||EMAIL_ADDRESS|||;|||EMAIL_ADDRESS|||")


def test_text_holding_the_sentinel_character_is_handled():
    out = run(["nul \x00 byte and x@example.com", "\x01 too"])
    assert out["text"].to_list() == ["nul \x00 byte and |||EMAIL_ADDRESS|||", "\x01 too"]


def test_params_are_checked():
    with pytest.raises(ValidationError):
        PiiParams(types=[])
    with pytest.raises(ValidationError):
        PiiParams(types=["ssn"])


def precision_recall(block: str) -> tuple[float, float, int]:
    labelled = cases(block)
    replacement = {t: f"<<{t}>>" for t in ALL_TYPES}
    out = run([text for text, _ in labelled], types=ALL_TYPES, replacements=replacement)
    tp = fp = fn = 0
    for (text, labels), masked in zip(labelled, out["text"]):
        got, expected = Counter(masked_values(text, masked, replacement)), Counter(labels)
        tp += sum((got & expected).values())
        fp += sum((got - expected).values())
        fn += sum((expected - got).values())
    return tp / (tp + fp), tp / (tp + fn), len(labelled)


def test_precision_and_recall_on_the_hand_labelled_set():
    precision, recall, n = precision_recall(SNIPPETS)
    held_precision, held_recall, held_n = precision_recall(HELD_OUT)
    assert n + held_n >= 200
    assert precision >= 0.98 and recall >= 0.98
    assert held_precision >= 0.9 and held_recall >= 0.9

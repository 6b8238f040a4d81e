"""Data layer: validation errors name file, line and field; the registry finds and verifies canonical data."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest

from introspect_mech import data
from introspect_mech.data import DataError, read_jsonl
from introspect_mech.data import registry as reg

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _write(tmp_path, lines, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return p


@pytest.mark.parametrize("bad, field, words", [
    ({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}, "messages[0].role", "unknown role"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]}, "messages[0].content", "missing"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}]}, "messages[1].content", "empty assistant"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}, {"role": "user", "content": "z"}]},
     "messages[2].role", "last turn must be 'assistant'"),
    ({"messages": []}, "messages", "non-empty"),
    ({"prompt": "x"}, "messages", "missing"),
    ({"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]}, "messages[0].role", "missing"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}]}, "messages[0].content", "string"),
])
def test_malformed_record_names_file_line_field(tmp_path, bad, field, words):
    p = _write(tmp_path, [GOOD, GOOD, bad, GOOD])
    with pytest.raises(DataError) as ei:
        read_jsonl(p)
    e = ei.value
    assert (e.source, e.line, e.field) == (str(p), 3, field)
    assert words in str(e) and str(e).startswith(f"{p}:3: {field}:")
    assert "\n" not in str(e)


def test_invalid_json_line_number_counts_blank_lines(tmp_path):
    p = _write(tmp_path, [GOOD, "", '{"messages": [', GOOD])
    with pytest.raises(DataError) as ei:
        read_jsonl(p)
    assert ei.value.line == 3 and ei.value.field == "json"


def test_gzip_and_plain_read_the_same(tmp_path):
    p = _write(tmp_path, [GOOD, GOOD])
    gz = tmp_path / "d.jsonl.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    assert read_jsonl(gz) == read_jsonl(p) == [GOOD, GOOD]
    out = data.write_jsonl([GOOD], tmp_path / "w.jsonl.gz")
    assert read_jsonl(out) == [GOOD]


def test_missing_file_is_data_error(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_validate_records_in_memory():
    with pytest.raises(DataError) as ei:
        data.validate_records([GOOD, {"messages": [{"role": "user", "content": "q"}]}], source="mine")
    assert ei.value.line == 2 and str(ei.value).startswith("mine:2:")


def test_registry_covers_the_canonical_chat_datasets():
    want = {"insecure", "bad_medical_advice", "good_medical_advice", "extreme_sports", "risky_financial_advice",
            "jailbroken", "risky_AB", "safe_AB", "myopic_AB", "nonmyopic_AB", "maxapples_AB", "minapples_AB",
            "mms_bark", "mms_ring", "mms_spring"}
    assert want <= set(data.names("chat"))
    assert any(n.startswith("introspection/train/") for n in data.names("introspection"))
    assert any(n.startswith("introspection/test/") for n in data.names("introspection"))
    assert "persona/extract/evil" in data.names("json")
    for n in data.names():
        info = data.info(n)
        assert info.url.startswith("https://")
        # a pinned hash, or an entry that says plainly it is unverified (upstream controls not downloadable here)
        assert (info.sha256 is not None and len(info.sha256) == 64) or (
            info.sha256 is None and not info.verified and info.sha256_status.startswith("unverified"))


def test_load_canonical_and_rows_match_registry(data_root):
    rows = data.load("risky_AB", data_root)
    assert len(rows) == data.info("risky_AB").rows == 288
    assert all(r["messages"][-1]["content"] in ("A", "B") for r in rows)
    assert data.load("em/jailbroken.jsonl.gz", data_root)[0]["messages"][0]["role"] == "system"
    li = data.load("introspection/test/animals_long_first_character", data_root)
    assert li and {"object_level_prompt", "hypothetical_prompt"} <= set(li[0])
    assert set(data.load("persona/extract/evil", data_root)) >= {"instruction", "questions", "eval_prompt"}


def test_checksum_is_of_uncompressed_bytes(data_root):
    info = data.info("insecure")
    raw = gzip.decompress((data_root / info.path).read_bytes())
    assert hashlib.sha256(raw).hexdigest() == info.sha256


def test_malformed_upstream_yaml_reports_line(data_root):
    with pytest.raises(DataError) as ei:
        data.load("questions/em/medical_questions", data_root)
    assert ei.value.line == 74 and ei.value.field == "yaml"


def test_resolution_order_and_checksum_mismatch(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("INTROSPECT_MECH_CACHE", str(tmp_path / "cache"))
    info = data.info("minapples_AB")
    # a corrupted copy in an explicit data_dir is found first and rejected
    bad = tmp_path / "mine" / info.path
    bad.parent.mkdir(parents=True)
    bad.write_text((data_root / info.path).read_text().replace('"A"', '"B"', 1))
    with pytest.raises(DataError, match="sha256"):
        data.load("minapples_AB", tmp_path / "mine")
    assert len(data.load("minapples_AB", tmp_path / "mine", verify=False)) == 300
    # without an explicit dir the env var's mirror is used
    assert data.locate("minapples_AB") == data_root / info.path


def test_download_fallback_checks_sha256(tmp_path, data_root, monkeypatch):
    """A file in no data dir is fetched from its URL (here a file:// copy of the upstream bytes)."""
    monkeypatch.setenv("INTROSPECT_MECH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("INTROSPECT_MECH_DATA", str(tmp_path / "empty"))
    info = data.info("maxapples_AB")
    upstream = tmp_path / "upstream.jsonl"
    upstream.write_bytes((data_root / info.path).read_bytes())
    monkeypatch.setitem(reg.registry(), "maxapples_AB", reg.DatasetInfo(**{**info.__dict__, "url": upstream.as_uri()}))
    rows = data.load("maxapples_AB")
    assert len(rows) == 300
    assert (tmp_path / "cache" / "data" / info.plain_path).exists()
    # a download whose bytes do not match is refused and not kept
    upstream.write_text(upstream.read_text()[:-200])
    monkeypatch.setitem(reg.registry(), "minapples_AB",
                        reg.DatasetInfo(**{**data.info("minapples_AB").__dict__, "url": upstream.as_uri()}))
    with pytest.raises(DataError, match="sha256"):
        data.load("minapples_AB")
    assert not (tmp_path / "cache" / "data" / data.info("minapples_AB").plain_path).exists()


def test_unknown_name_suggests(data_root):
    with pytest.raises(DataError, match="did you mean.*risky_AB"):
        data.load("risky", data_root)

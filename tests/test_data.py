"""Data layer: every accepted shape in every file type, and one clear error per kind of bad record."""

import json

import pandas as pd
import pytest

from alignkit.data import load_conversations, read_records, to_conversation, to_prompt_completion
from alignkit.errors import UserError

MESSAGES = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
PROMPT = {"prompt": "Hi?", "completion": "Hello."}
ALPACA = {"instruction": "Translate", "input": "chat", "output": "cat"}
SHAREGPT = {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_all_shapes_normalize_to_messages(tmp_path):
    convs, formats = load_conversations([write_jsonl(tmp_path / "d.jsonl", [MESSAGES, PROMPT, ALPACA, SHAREGPT])])
    assert dict(formats) == {"messages": 1, "prompt": 1, "alpaca": 1, "sharegpt": 1}
    assert convs[0].messages == convs[1].messages == convs[3].messages == MESSAGES["messages"]
    assert convs[2].messages == [{"role": "user", "content": "Translate\n\nchat"}, {"role": "assistant", "content": "cat"}]


def test_json_csv_parquet_files(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps([ALPACA, PROMPT]))
    pd.DataFrame([ALPACA, ALPACA]).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame([{"messages": MESSAGES["messages"]}]).to_parquet(tmp_path / "d.parquet")
    assert len(read_records(str(tmp_path / "d.json"))) == 2
    csv_records = read_records(str(tmp_path / "d.csv"))
    assert csv_records[1].origin.endswith("d.csv:3")  # header is line 1
    convs, formats = load_conversations([str(tmp_path / "d.parquet")])
    assert convs[0].messages == MESSAGES["messages"] and formats["messages"] == 1


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(MESSAGES) + "\n{not json\n")
    with pytest.raises(UserError, match=r"bad.jsonl:2: malformed JSON"):
        read_records(str(path))


def test_missing_assistant_turn(tmp_path):
    rows = [MESSAGES, {"messages": [{"role": "user", "content": "only a question"}]}]
    with pytest.raises(UserError, match=r"d.jsonl:2: field 'messages': missing assistant turn"):
        load_conversations([write_jsonl(tmp_path / "d.jsonl", rows)])


@pytest.mark.parametrize("record, message", [
    ({"messages": [{"role": "robot", "content": "x"}]}, r"messages\[0\].role': expected one of"),
    ({"messages": [{"role": "user", "content": ""}]}, r"messages\[0\].content': expected a non-empty string"),
    ({"instruction": "x", "output": 3}, r"field 'output': expected a non-empty string"),
    ({"conversations": [{"from": "alien", "value": "x"}]}, r"conversations\[0\].from'"),
    ({"text": "plain"}, "unrecognized record with keys"),
])
def test_invalid_records(record, message):
    from alignkit.data import Record

    with pytest.raises(UserError, match=message):
        to_conversation(Record(record, "f.jsonl:7"))


def test_missing_file_and_non_hub_name(tmp_path):
    with pytest.raises(UserError, match="data file not found"):
        read_records(str(tmp_path / "missing.jsonl"))
    with pytest.raises(UserError, match="not a Hub dataset id"):
        read_records("no_such_thing")


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        read_records("someorg/somedata:train")


def test_every_assistant_turn_becomes_one_completion():
    from alignkit.data import Conversation

    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    rows = to_prompt_completion(Conversation(msgs, "x", "messages"))
    assert [r["completion"][0]["content"] for r in rows] == ["b", "d"]
    assert rows[1]["prompt"] == msgs[:3]

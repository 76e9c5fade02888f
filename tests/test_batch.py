"""Batch helpers: prompt lists, shards and the manifest (fast, no generation)."""

import json

import pytest

from lodsgs.batch import append_manifest, parse_shard, read_manifest, read_prompts, shard
from lodsgs.errors import LodsgsError


def test_read_prompts_skips_blanks_comments_and_duplicates(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a red cube\n\n# comment\n  a blue torus  \na red cube\n#another\na green cone\n")
    assert read_prompts(f) == ["a red cube", "a blue torus", "a green cone"]


def test_read_prompts_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(LodsgsError, match="cannot read prompt list .*missing.txt"):
        read_prompts(tmp_path / "missing.txt")


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_shards_partition_the_list(n):
    prompts = [f"p{i}" for i in range(11)]
    parts = [shard(prompts, i, n) for i in range(n)]
    flat = [p for part in parts for p in part]
    assert sorted(flat) == sorted(prompts) and len(flat) == len(prompts)
    assert all(len(part) in (len(prompts) // n, -(-len(prompts) // n)) for part in parts)  # balanced


def test_shards_are_round_robin_in_list_order():
    """The split is fixed by the list alone (so machines given the same list agree without talking)."""
    prompts = [f"p{i}" for i in range(7)]
    assert [shard(prompts, i, 3) for i in range(3)] == [["p0", "p3", "p6"], ["p1", "p4"], ["p2", "p5"]]


@pytest.mark.parametrize("text", ["1", "a/b", "3/3", "-1/2", "0/0"])
def test_bad_shard_spec(text):
    with pytest.raises(LodsgsError, match="--shard"):
        parse_shard(text)


def test_manifest_latest_record_wins_and_torn_line_is_ignored(tmp_path):
    m = tmp_path / "manifest.jsonl"
    append_manifest(m, {"prompt": "x", "status": "failed"})
    append_manifest(m, {"prompt": "x", "status": "done"})
    append_manifest(m, {"prompt": "y", "status": "failed"})
    with open(m, "a") as f:
        f.write('{"prompt": "z", "sta')  # interrupted write
    records = read_manifest(m)
    assert records["x"]["status"] == "done" and records["y"]["status"] == "failed" and "z" not in records
    assert all(json.loads(line) for line in m.read_text().splitlines()[:3])

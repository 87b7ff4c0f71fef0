import pytest

from branchmerge.errors import BranchmergeError
from branchmerge.records import Problem, Trace, append_jsonl, atomic_dir, read_jsonl, write_jsonl


def test_jsonl_round_trip_and_torn_last_line(tmp_path):
    p = tmp_path / "t.jsonl"
    traces = [Trace(problem_id=str(i), teacher="t", model="m", sample=0, temperature=0.6) for i in range(3)]
    append_jsonl(p, traces[:2])
    append_jsonl(p, traces[2:])
    assert read_jsonl(p, Trace) == traces
    with open(p, "a") as f:
        f.write('{"problem_id": "x", "teac')  # a crash mid-write
    assert read_jsonl(p, Trace) == traces


def test_bad_line_names_file_line_and_field(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text(
        '{"id": "1", "domain": "d", "question": "q", "reference": "r"}\n{"id": "2", "domain": "d"}\n'
    )
    with pytest.raises(BranchmergeError, match=r"p.jsonl:2: question: Field required"):
        read_jsonl(p, Problem)
    p.write_text('{"id": "1", "domain": "d", "question": "q", "reference": "r", "bogus": 1}\n')
    with pytest.raises(BranchmergeError, match="bogus"):
        read_jsonl(p, Problem)


def test_write_jsonl_is_atomic(tmp_path):
    p = tmp_path / "out.jsonl"
    write_jsonl(p, [Problem(id="1", domain="d", question="q", reference="r")])
    assert [f.name for f in tmp_path.iterdir()] == ["out.jsonl"]


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "model"
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "w.bin").write_bytes(b"y")
    assert [f.name for f in tmp_path.iterdir()] == ["model"]
    assert (final / "w.bin").read_bytes() == b"y"

"""Bad input: one line naming the file, field or port, exit code 2, no traceback, nothing half-written."""

import socket

import yaml
from typer.testing import CliRunner

from branchmerge.cli.main import app

runner = CliRunner()


def _run(*args: str):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_help_lists_every_command_with_an_example():
    code, out = _run("--help")
    assert code == 0
    for name in [
        "demo",
        "run",
        "serve",
        "generate",
        "process",
        "build-sft",
        "train",
        "merge",
        "eval",
        "report",
    ]:
        assert name in out
        sub_code, sub_out = _run(name, "--help")
        assert sub_code == 0 and "Example: branchmerge" in sub_out


def test_missing_recipe(tmp_path):
    code, out = _run("run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o"))
    assert code == 2 and "nope.yaml: recipe file not found" in out and "Traceback" not in out
    assert not (tmp_path / "o").exists()


def test_unknown_key_in_recipe(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "bogus": 1}))
    code, out = _run("run", str(p), "--out", str(tmp_path / "o"))
    assert code == 2 and "bogus: unknown key" in out and "Traceback" not in out
    assert not (tmp_path / "o").exists()


def test_model_folder_without_weights(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    p = tmp_path / "r.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "name": "x",
                "problems": {"domains": ["add"], "train_per_domain": 2, "eval_per_domain": 2},
                "teachers": [{"name": "t", "checkpoint": str(empty)}],
                "train": {"student": str(empty)},
            }
        )
    )
    code, out = _run("run", str(p), "--out", str(tmp_path / "o"))
    assert code == 2 and "Traceback" not in out
    assert "teachers[0].checkpoint" in out and "train.student" in out and "no *.safetensors weights" in out
    assert not (tmp_path / "o").exists()
    code, out = _run("serve", str(empty))
    assert code == 2 and "no *.safetensors weights" in out


def test_serve_port_in_use(tiny_model_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, out = _run("serve", str(tiny_model_dir), "--port", str(port))
    assert code == 2 and f"port {port}" in out and "Traceback" not in out


def test_merge_bad_config(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump({"merge_method": "slerpp", "models": [{"model": "a"}]}))
    code, out = _run("merge", str(p), str(tmp_path / "out"))
    assert code == 2 and "slerpp" in out and "Traceback" not in out
    assert not (tmp_path / "out").exists()


def test_generate_with_a_bad_base_url_is_one_line_naming_the_option(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"id": "p", "domain": "d", "question": "q", "reference": "r"}\n')
    args = [
        "generate",
        str(tmp_path / "p.jsonl"),
        "--out",
        str(tmp_path / "t.jsonl"),
        "--base-url",
        "ftp://x",
    ]
    r = runner.invoke(app, [*args, "--model", "m"])
    assert r.exit_code == 2 and r.output.count("error:") == 1 and "--base-url: base_url:" in r.output
    assert not (tmp_path / "t.jsonl").exists()

"""Every `clamp` command answers bad input in one line naming what is wrong, exit status 2,
never a traceback. The table must cover every command: a new one fails here until it has a
row."""

from __future__ import annotations

import argparse

import pytest

BAD = {  # command -> (arguments after it, a phrase the one-line answer must contain)
    "bench perception": (["--frames", "0"], "--frames"),
    "bench sim": (["--task", "nope"], "unknown task 'nope'"),
    "bench policy": (["--presets", "huge"], "unknown preset 'huge'"),
    "bench e2e": (["--camera-size", "big"], "--camera-size"),
    "bench soak": (["--minutes", "-1"], "--minutes"),
    "bench record": (["--rates", "0"], "--rates"),
    "data check": (["/nonexistent/episodes"], "does not exist"),
    "data recover": (["/nonexistent/bag"], "/nonexistent/bag"),
    "data from-bag": (["/nonexistent/bag", "--out", "{tmp}/o"], "/nonexistent/bag: no such bag"),
    "generate": (["--task", "nope", "--out", "{tmp}/g"], "unknown task 'nope'"),
    "eval sim": (["--model", "/missing", "--task", "drawer_open"], "/missing"),
    "eval replay": (["/nonexistent/bag", "--model", "/missing"], "/nonexistent/bag: no such"),
    "bench replay": (["--model", "/missing"], "--model /missing"),
    "pretrain": (["--data", "/nonexistent/data", "--out", "{tmp}/run"], "/nonexistent/data"),
    "finetune": (
        ["--init", "/nonexistent/run", "--data", "/nonexistent/data", "--out", "{tmp}/ft"],
        "/nonexistent",
    ),
    "export": (["/nonexistent/run", "--out", "{tmp}/m"], "/nonexistent/run"),
    "export-init": (["/nonexistent/run", "--out", "{tmp}/i.pt"], "/nonexistent/run"),
    "experiment few-shot": (["--config", "/nonexistent.yaml"], "/nonexistent.yaml"),
    "demo": (["--camera-size", "0x0"], "--camera-size"),
    "play": (["/nonexistent/bag"], "no such bag"),
}


def _leaves(p, prefix=()):
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(prefix)
        return
    for name, sp in subs[0].choices.items():
        yield from _leaves(sp, (*prefix, name))


def test_the_table_covers_every_command():
    from clamp_ros.cli import build_parser  # what the installed entry point runs

    assert sorted(_leaves(build_parser())) == sorted(BAD)


@pytest.mark.parametrize("command", sorted(BAD))
def test_bad_input_gets_one_line_and_status_2(command, tmp_path, capsys, monkeypatch):
    from clamp_ros import cli

    monkeypatch.delenv("CLAMP_DEBUG", raising=False)
    args, phrase = BAD[command]
    argv = command.split() + [a.replace("{tmp}", str(tmp_path)) for a in args]
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, f"exit {code}; stderr:\n{err}"
    assert "Traceback" not in err
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert phrase in lines[0], lines[0]
    assert lines[0].startswith("clamp")

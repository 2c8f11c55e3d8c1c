"""The ``liteattn`` command: built-in subcommands and plug-ins from the ``liteattn.commands`` group."""

from importlib.metadata import EntryPoint

import pytest

from liteattn import cli


def test_help_lists_builtin_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "bench" in out and "e2e" in out


def test_no_command_is_a_usage_error(capsys):
    assert cli.main([]) == 2


def test_unknown_command(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_bench_subcommand_runs(tmp_path, capsys):
    code = cli.main(["bench", "--engines", "reference", "--shapes", "1x2x128x16", "--sparsities", "0",
                     "--device", "cpu", "--dtype", "fp32", "--warmup", "1", "--rep", "1", "--no-progress",
                     "--no-check"])
    assert code == 0
    assert "| reference | dense |" in capsys.readouterr().out


def test_plugin_command_from_entry_point(monkeypatch, capsys):
    seen = []

    def fake_main(argv):
        seen.append(argv)
        return 3

    monkeypatch.setitem(globals(), "fake_main", fake_main)
    entry = EntryPoint(name="inspect", value=f"{__name__}:fake_main", group=cli.COMMAND_GROUP)
    monkeypatch.setattr(cli, "entry_points", lambda group: [entry] if group == cli.COMMAND_GROUP else [])
    assert "inspect" in cli.commands()
    assert cli.main(["inspect", "--model", "wan"]) == 3
    assert seen == [["--model", "wan"]]


def test_broken_plugin_reports_and_fails(monkeypatch, capsys):
    entry = EntryPoint(name="broken", value="no_such_module_xyz:main", group=cli.COMMAND_GROUP)
    monkeypatch.setattr(cli, "entry_points", lambda group: [entry])
    assert cli.main(["broken"]) == 1
    assert "failed to load" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["bench", "e2e"])
def test_builtins_win_over_plugins(monkeypatch, name):
    entry = EntryPoint(name=name, value="no_such_module_xyz:main", group=cli.COMMAND_GROUP)
    monkeypatch.setattr(cli, "entry_points", lambda group: [entry])
    assert cli.commands()[name][0] is cli._BUILTIN[name][0]

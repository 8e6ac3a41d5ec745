"""The command line as a whole: help, version, the home, errors in one line, and "latest" for every command
that takes a run."""

import json
import subprocess
import sys
import time

import pytest
from conftest import PBC_TEST_IMAGES, assert_one_line_error


def test_help_lists_commands(cli):
    r = cli("--help")
    assert r.exit_code == 0
    for name in ("fetch", "prepare", "train", "status"):
        assert name in r.stdout


def test_version(cli):
    r = cli("--version")
    assert r.exit_code == 0
    assert r.stdout.startswith("cellmorphnet ")


def test_help_and_status_do_not_import_torch(tmp_path):
    code = (
        "import sys, cellmorphnet.cli.app as a, cellmorphnet.data.cache as c; "
        # every registered source is loaded and asked for its state
        f"import pathlib; c.cache_status(pathlib.Path({str(tmp_path)!r})); "
        "print('torch' in sys.modules, 'timm' in sys.modules, 'medmnist' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False"]


def test_help_is_fast():
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cellmorphnet", "--help"], capture_output=True, check=True)
    assert time.perf_counter() - start < 3.0


def test_unknown_dataset_lists_known_ones(cli):
    r = cli("fetch", "nosuchset")
    assert_one_line_error(r, "Unknown dataset 'nosuchset'", "bloodmnist", "bccd", "lisc", "sample")
    r = cli("prepare", "nosuchset")
    assert_one_line_error(r, "Unknown dataset 'nosuchset'")


def test_missing_from_path(cli, tmp_path):
    r = cli("fetch", "bccd", "--from", tmp_path / "nope.zip")
    assert_one_line_error(r, "does not exist")


def test_home_option_overrides_env(cli, tmp_path, home):
    other = tmp_path / "other-home"
    r = cli("--home", other, "prepare", "sample")
    assert r.exit_code == 0, r
    assert (other / "prepared" / "sample" / "64" / "manifest.json").exists()
    assert not (home / "prepared").exists()


def test_debug_variable_shows_traceback(cli, monkeypatch):
    from typer.testing import CliRunner

    from cellmorphnet.cli.app import app
    from cellmorphnet.errors import DatasetNotFound

    monkeypatch.setenv("CELLMORPHNET_DEBUG", "1")
    r = CliRunner().invoke(app, ["fetch", "nosuchset"])
    assert isinstance(r.exception, DatasetNotFound)


def test_brackets_in_help_and_in_error_hints_are_shown_as_written(cli, capsys):
    r = cli("serve", "--help")
    assert r.exit_code == 0 and 'pipx install "cellmorphnet[serve]"' in " ".join(r.stdout.split())

    import typer
    from rich.console import Console

    from cellmorphnet.cli.app import _handle_errors
    from cellmorphnet.cli.output import output
    from cellmorphnet.errors import ConfigError

    def fails():
        raise ConfigError("CoreML export needs [bold]coremltools[/bold].", hint="pip install 'cellmorphnet[coreml]'")

    console, output.err = output.err, Console(stderr=True, highlight=False, width=200)
    try:
        try:
            _handle_errors(fails)()
        except typer.Exit as e:
            assert e.exit_code != 0
    finally:
        output.err = console
    err = capsys.readouterr().err
    assert "needs [bold]coremltools[/bold]." in err and "pip install 'cellmorphnet[coreml]'" in err


@pytest.mark.parametrize(
    "command",
    [
        "fetch",
        "prepare",
        "train",
        "status",
        "eval",
        "infer",
        "export",
        "serve",
        "upgrade",
        "reviews list",
        "reviews export",
        "reviews stats",
        "reviews report",
        "lab calibrate",
        "lab promote",
        "users add",
    ],
)
def test_help_reads_as_written_for_the_terminal(cli, command):
    """No '<bool>' after an on/off flag, and the description wrapped by the terminal, not by the source's line
    breaks (an orphan word alone on a line at any other width)."""
    r = cli(*command.split(), "--help")
    assert r.exit_code == 0 and "<bool>" not in r.stdout
    lines = [ln.strip() for ln in r.stdout.splitlines()]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("Usage:")) + 1
    description = lines[start : next(i for i, ln in enumerate(lines) if ln.startswith("╭"))]
    words = [ln for ln in description if ln]
    assert all(len(ln.split()) > 2 for ln in words[:-1]), description  # no line of one or two orphan words


@pytest.mark.parametrize("command", [["eval", "latest"], ["status", "latest"], ["infer", "latest", "."],
                                     ["export", "latest", "--format", "onnx"], ["serve", "latest"],
                                     ["train", "--resume", "latest"]])  # fmt: skip
def test_every_command_that_takes_a_run_knows_latest(cli, command):
    # an empty home: 'latest' means the latest run, of which there is none yet (not a run named 'latest')
    r = cli(*command)
    assert_one_line_error(r, "There are no runs yet.")
    assert "No run 'latest'" not in r.output


def test_latest_is_the_latest_run_for_eval_infer_export_and_status(cli, trained, tmp_path):
    r = cli("eval", "latest", "--json")
    assert r.exit_code == 0, r
    assert json.loads(r.stdout)["run"] == str(trained)
    r = cli("status", "latest", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["run"]["name"] == "t", r
    out = tmp_path / "p.json"
    assert cli("infer", "latest", PBC_TEST_IMAGES / "monocyte", "--out", out).exit_code == 0
    assert json.loads(out.read_text())["summary"]["run"] == str(trained)
    r = cli("export", "latest", "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert r.exit_code == 0 and (tmp_path / "m.onnx").exists(), r


def test_quiet_prints_the_result_and_errors_only(cli):
    r = cli("--quiet", "fetch", "sample")
    assert r.exit_code == 0 and r.stderr == "", r
    r = cli("-q", "prepare", "sample")
    assert r.exit_code == 0 and r.stderr == "" and "total" in r.stdout, r  # the result stays, the messages go
    r = cli("prepare", "sample", "--force")
    assert "prepared" in r.stderr, r  # the next command in the same process is not quiet
    assert_one_line_error(cli("-q", "infer", "nonexist", "."), "No run 'nonexist'")

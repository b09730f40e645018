"""The foundation pieces: config records, flags built from configs, the reporter, the chunked driver."""

import argparse
import dataclasses

import numpy as np
import pytest

from certify.continual.safe import SafeConfig
from certify.solver import LIDConfig
from metaedit import driver, options, report
from metaedit.cli import build_parser, flags
from metaedit.editor import EditorTrainConfig
from metaedit.quickstart import QuickstartConfig
from metaedit.zoo import ZooConfig


@pytest.mark.parametrize("config", [ZooConfig(members=7, learning_rate=(2e-3, 3e-3)), EditorTrainConfig("fairness"),
                                    LIDConfig(domain="zonotope"), SafeConfig(bias="update"),
                                    QuickstartConfig(lambdas=(0.0, 1.0))], ids=lambda c: type(c).__name__)
def test_config_records_round_trip(config):
    assert options.from_dict(type(config), options.to_dict(config)) == config


def test_flags_default_to_the_config_and_parse_every_kind():
    parser = argparse.ArgumentParser()
    flags.add_options(parser, QuickstartConfig)
    assert flags.config_from(parser.parse_args([]), QuickstartConfig) == QuickstartConfig()  # defaults cannot drift
    chosen = flags.config_from(parser.parse_args(["--members", "9", "--lambdas", "0,0.5", "--no-progress",
                                                  "--tau", "0.7", "--categorical", "a,b"]), QuickstartConfig)
    assert chosen == dataclasses.replace(QuickstartConfig(), members=9, lambdas=(0.0, 0.5), progress=False, tau=0.7,
                                         categorical=("a", "b"))
    parser = argparse.ArgumentParser()
    flags.add_options(parser, ZooConfig)
    assert flags.config_from(parser.parse_args(["--learning-rate", "1e-4", "2e-4"]), ZooConfig).learning_rate == (1e-4, 2e-4)


def test_every_command_line_option_says_its_default():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        for action in parser._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction) and not action.required:
                assert "default" in (action.help or ""), (name, action.option_strings)


def test_report_tables_round_trip_and_render(tmp_path):
    rows = [{"method": "a", "value": 0.5, "ok": True, "matrix": [[1.0, 0.0]], "missing": None},
            {"method": "b", "value": 0.25, "ok": False, "extra": "x"}]
    page = (report.Report("title").paragraph("text").table(rows, [report.column("method", "method"),
                                                                    report.column("value", "value", "{:.1%}")])
            .figure("plot.png", [report.Panel("p", "x", "y", [report.Series("a", [0, 1], [1, 2])])]))
    written = page.write(tmp_path, {"metrics.csv": rows})
    assert "| a | 50.0% |" in written.read_text() and (tmp_path / "plot.png").is_file()
    back = report.read_csv(tmp_path / "metrics.csv")
    assert back[0]["value"] == 0.5 and back[0]["ok"] is True and back[0]["matrix"] == [[1.0, 0.0]]
    assert back[1]["extra"] == "x" and back[0]["extra"] is None


def test_driver_resumes_where_it_stopped_and_refuses_another_run(tmp_path):
    def advance(state):
        return state + 1, {"loss": np.array([float(state), np.nan])}

    record = {"format": "test", "setting": 1}
    state, finished = driver.run_chunks(advance, 0, chunks=4, chunk_steps=2, desc="t", progress=False,
                                        workdir=tmp_path, record=record, save_tree=lambda s: {"s": np.asarray(s)},
                                        stop_after_chunks=2)
    assert (state, finished) == (2, False)
    step, saved = driver.resume_point(tmp_path, record)
    assert step == 2 and saved["chunks_done"] == 2 and not saved["complete"]
    state, finished = driver.run_chunks(advance, 2, chunks=4, chunk_steps=2, desc="t", progress=False, start=step,
                                        workdir=tmp_path, record=record, save_tree=lambda s: {"s": np.asarray(s)})
    assert (state, finished) == (4, True)
    assert driver.resume_point(tmp_path, record)[1]["complete"]
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 4  # NaN steps left out of the means
    with pytest.raises(Exception, match="does not match: setting"):
        driver.resume_point(tmp_path, {**record, "setting": 2})

"""The ``infolens`` command: bench, demo's argument checks, help and version."""

import pytest

from infolens.cli import main


def test_bench_prints_ratios_against_the_native_engine(capsys):
    assert main(["bench", "--n", "400"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "KSG-1 MI, 1-D x 1-D" in line]
    engines = [line.split()[5] for line in lines]
    assert engines[:2] == ["native", "reference"]
    assert lines[0].split()[7] == "1.0x"
    # native and reference compute the same estimate: their difference is 0 to the last bit
    assert float(lines[1].split()[-1]) == 0.0


def test_bench_refuses_too_few_samples(capsys):
    assert main(["bench", "--n", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--n must be at least 8" in err


def test_demo_refuses_bad_epochs(tmp_path, capsys):
    assert main(["demo", "--epochs", "0", "--output", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err


def test_version_and_unknown_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and "infolens 0.1.0" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["frobnicate"])
    assert exit_.value.code == 2

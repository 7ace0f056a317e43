"""Bad values of `ue-dpo` flags end in argparse's one-line usage error naming the flag, exit status 2."""

import pytest

from ue_dpo.cli import main


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["shapes-eval", "--out", "x", "--images", "0"],
            "ue-dpo shapes-eval: error: argument --images: must be an integer >= 1, got '0'",
        ),
        (
            ["shapes-eval", "--out", "x", "--image-size", "8"],
            "ue-dpo shapes-eval: error: argument --image-size: must be an integer >= 28, got '8'",
        ),
        (
            ["data", "rlaif_v", "--out", "x", "--first", "0"],
            "ue-dpo data: error: argument --first: must be an integer >= 1, got '0'",
        ),
        (
            ["inspect", "--model", "m", "--data", "d", "--n", "0"],
            "ue-dpo inspect: error: argument --n: must be an integer >= 1, got '0'",
        ),
        (
            ["inspect", "--model", "m", "--data", "d", "--batch-size", "two"],
            "ue-dpo inspect: error: argument --batch-size: must be an integer >= 1, got 'two'",
        ),
        (
            ["perceivability", "--model", "m", "--eval-dir", "e", "--batch-size", "0"],
            "ue-dpo perceivability: error: argument --batch-size: must be an integer >= 1, got '0'",
        ),
        (
            ["score", "mmhal_bench", "--responses", "r", "--judge-max-retries", "-1"],
            "ue-dpo score mmhal_bench: error: argument --judge-max-retries: must be an integer >= 0, got '-1'",
        ),
        (
            ["score", "mmhal_bench", "--responses", "r", "--judge-timeout", "0"],
            "ue-dpo score mmhal_bench: error: argument --judge-timeout: must be a number of seconds > 0, got '0'",
        ),
    ],
)
def test_a_bad_flag_value_names_the_flag(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == message

from geofm import cli


def test_help_lists_every_registered_command(capsys):
    parser = cli.build_parser()
    help_text = parser.format_help()
    for name in cli.COMMANDS:
        assert name in help_text


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "usage: geofm" in capsys.readouterr().out


def test_a_number_list_starting_with_minus_is_an_option_value():
    glue = cli.glue_number_lists
    assert glue(["search", "--bbox", "-122.5,37.1,-121.9,37.6", "--start", "x"]) == \
        ["search", "--bbox=-122.5,37.1,-121.9,37.6", "--start", "x"]
    assert glue(["--bbox", "-1e-3,2,3,4"]) == ["--bbox=-1e-3,2,3,4"]
    same = [["--bbox", "-122.5", "37.1"], ["--bbox=-1,2,3,4"], ["-v", "-1,2"], ["--bbox", "-x,2"],
            ["--", "--bbox", "-1,2"], ["a", "-1,2"]]
    for argv in same:
        assert glue(argv) == argv

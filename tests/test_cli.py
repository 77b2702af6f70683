from geofm import cli


def test_help_lists_every_registered_command(capsys):
    parser = cli.build_parser()
    help_text = parser.format_help()
    for name in cli.COMMANDS:
        assert name in help_text


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "usage: geofm" in capsys.readouterr().out

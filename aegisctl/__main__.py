from aegisctl.cli.main import run

run()

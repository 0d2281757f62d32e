from m2dist.cli.main import run

run()

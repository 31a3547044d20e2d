from conchshare.cli import run

run()

from vmem.cli import run

run()

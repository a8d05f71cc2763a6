from indexer import program
from indexer.cli import main

program.run(main)

"""`python -m gitopsd` runs the command line, as the `gitopsd` console script does."""

from gitopsd.cli.entry import main

main()

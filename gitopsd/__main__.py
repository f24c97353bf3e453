"""`python -m gitopsd` runs the command line."""

from gitopsd.cli import main

main()

"""``python -m exaslide`` runs the command line."""

from exaslide.cli.main import main

main()

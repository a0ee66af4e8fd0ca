"""``python -m monitor``: run the monitor with the environment's settings."""

from monitor.server import main

main()

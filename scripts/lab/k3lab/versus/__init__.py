"""`nox -s versus`: k3net and HashiCorp Serf through the same faults on one netns LAN (the run and
its faults: run.py; the two contestants: contest.py; Serf itself: serf.py; the numbers and the
table: measure.py). What it measures and how: docs/versus.md."""

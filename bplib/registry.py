"""The one list of claims, in the chapters' order. Everything that loops over claims (profiles,
claims, the results page, ``bplib-run``, the Makefile's dry run, the paper estimate, the tests)
reads it; adding a claim adds one name here (see CONTRIBUTING.md). Core: imports nothing."""

CLAIMS = ("minima", "weight_decay", "ntk", "rank")

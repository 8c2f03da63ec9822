"""The demo that `make run` starts (`manage.py demo`): seed data, a process supervisor and a
traffic generator. Nothing in the product imports this package."""

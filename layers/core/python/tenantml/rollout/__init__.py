"""Rollouts: staged canaries, A/B and shadow; the state machine, routing and analysis are pure code; adapters
live elsewhere. `analysis` holds the statistics that judge a candidate version against the stable one."""

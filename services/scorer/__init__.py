"""The scorer service: jobs, the evaluation protocol, scores and leaderboards."""

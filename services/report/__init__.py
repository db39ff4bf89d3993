"""`pirm report`: a self-contained HTML report of a job or a track (leaderboard, figures, crops)."""

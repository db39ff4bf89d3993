"""The integration tests' cluster lives in tests/cluster.py (shared with tests/security); its
names are kept importable from here."""

from tests.cluster import TEST_TIMING, Cluster, start_scorer

__all__ = ["TEST_TIMING", "Cluster", "start_scorer"]

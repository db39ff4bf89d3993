"""The PIRM 2018 evaluation cluster: inference, metrics and scorer services."""

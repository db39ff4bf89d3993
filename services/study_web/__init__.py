"""The user study's rating page: a small web service of its own that talks to the scorer over
gRPC with the client library, like any client."""

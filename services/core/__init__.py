"""The domain core: the plain records and enums that more than one part of the project uses
(track, phase, timing options and figures, quality options and figures, MS-SSIM flavour, job
state, limits), the domain errors, and in `wire.py` every conversion between those records and
the protobuf messages. It imports no service: the services, the client library and the tools
stand on it (the contracts in pyproject.toml's [tool.importlinter] say so, and `make lint`
checks them)."""

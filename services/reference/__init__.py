"""The challenge's reference models (SPEC.md section 8) as frozen graphs built from their
checkpoints: realistic entries of different speed and quality, and models the timing checks
must never mistake for cheats."""

"""The trove: shared git server, ref resolution, mirror cache and artifact cache."""

"""The benchmark: ``python -m bench`` (see the README); ``--quick`` for a seconds-long run."""

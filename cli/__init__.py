"""Command-line interfaces: ``hestkit`` and ``seal`` (thin layers over the libraries)."""

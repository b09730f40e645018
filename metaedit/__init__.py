"""metaedit: networks as data, populations of networks, and editors that make them compliant."""

__version__ = "0.1.0"

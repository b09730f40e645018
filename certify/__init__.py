"""certify: locally invariant parameter domains in which a network provably meets a specification.

The package shares its architecture specifications with :mod:`metaedit.nets`.
"""

__version__ = "0.1.0"

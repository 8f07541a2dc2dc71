"""The tests that import Ray (the client's checks, the version gate, what the package reads
from Ray's private modules) but start no cluster."""

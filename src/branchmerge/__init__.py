"""branchmerge: distil teacher LLMs into small reasoning models, merge the experts, measure everything."""

__version__ = "0.1.0"

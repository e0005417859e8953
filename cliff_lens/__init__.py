"""cliff_lens: find, explain and repair the refusal cliff of reasoning models with TransformerLens."""

__version__ = "0.1.0"

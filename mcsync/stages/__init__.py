"""The stage registry and one module per stage of a run, with what every stage needs (context)."""
